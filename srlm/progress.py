"""A compact Dagster logger for `srlm run`: one line per step start, materialization, check, failure,
plus the assets' own log lines, instead of Dagster's full debug event stream."""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg

PROGRESS_LOGGER = "srlm_progress"


def _step(record: logging.LogRecord) -> str:
    meta = getattr(record, "dagster_meta", {}) or {}
    return (meta.get("step_key") or "").replace("__", "/")


class ProgressHandler(logging.Handler):
    def __init__(self, stream=None):
        super().__init__(level=logging.DEBUG)
        self.stream = stream or sys.stdout
        self.started: dict[str, float] = {}

    def line(self, text: str) -> None:
        self.stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", {}) or {}
        event = meta.get("dagster_event")
        step = _step(record)
        if event is None:
            if record.levelno >= logging.INFO:
                self.line(f"    {step}: {meta.get('orig_message', record.getMessage())}")
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[step] = time.monotonic()
            self.line(f">>  {step}")
        elif kind == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            rows = mat.metadata.get("dagster/row_count")
            rows_text = f" ({rows.value} rows)" if rows is not None else ""
            self.line(f"ok  {mat.asset_key.to_user_string()}{rows_text}")
        elif kind == "ASSET_CHECK_EVALUATION":
            ev = event.event_specific_data
            skipped = ev.metadata.get("skipped")
            if skipped is not None and skipped.value:
                status = f"skipped ({ev.description})"
            else:
                status = "passed" if ev.passed else f"FAILED ({ev.severity.value.lower()})"
            self.line(f"    check {ev.asset_key.to_user_string()}:{ev.check_name} {status}")
        elif kind == "STEP_SUCCESS":
            seconds = time.monotonic() - self.started.get(step, time.monotonic())
            self.line(f"    {step} done in {seconds:.1f} s")
        elif kind == "STEP_FAILURE":
            error = event.event_specific_data.error
            cause = error.cause or error
            while cause.cause is not None:
                cause = cause.cause
            self.line(f"!!  {step} FAILED: {cause.message.strip()}")
        elif kind == "PIPELINE_FAILURE":
            self.line("!!  run failed")


@dg.logger(description="Compact progress lines for `srlm run` (step starts, materializations, checks, failures).")
def progress_logger(_init_context) -> logging.Logger:
    logger = logging.Logger(PROGRESS_LOGGER, level=logging.DEBUG)
    logger.addHandler(ProgressHandler())
    return logger
