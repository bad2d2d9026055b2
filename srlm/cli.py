"""The `srlm` command: run the experiment, open the UI, query the warehouse.

    srlm run [--config FILE] [--select SELECTION]   materialize the experiment into $SRLM_HOME/dagster
    srlm ui  [--config FILE] [--host H] [--port P]  the Dagster UI (127.0.0.1 unless told otherwise)
    srlm sql "QUERY" [--format table|csv|json]      read-only SQL on $SRLM_HOME/warehouse.duckdb
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from srlm.config import CONFIG_ENV, HOME_ENV, ConfigError, ExperimentConfig, load_config
from srlm.paths import DEFINITIONS_FILE, REPO_ROOT

EXIT_FAILED, EXIT_USAGE = 1, 2
DAGSTER_YAML = REPO_ROOT / "dagster.yaml"


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"srlm: {message}", file=sys.stderr)
    return code


def prepare_environment(config_path: str | None) -> ExperimentConfig:
    """Load (validate) the config and export what Dagster and its subprocesses need: the config file,
    SRLM_HOME and DAGSTER_HOME (with the shipped dagster.yaml)."""
    if config_path is not None:
        config_path = str(Path(config_path).expanduser().resolve())
        os.environ[CONFIG_ENV] = config_path
    cfg = load_config(config_path)
    home = cfg.home
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copyfile(DAGSTER_YAML, dagster_home / "dagster.yaml")
    nux = dagster_home / ".nux" / "nux.yaml"  # the UI's first-visit modal, already seen
    if not nux.exists():
        nux.parent.mkdir(exist_ok=True)
        nux.write_text("seen: 1\n")
    os.environ[HOME_ENV] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = prepare_environment(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    import dagster as dg

    from definitions import EXPERIMENT_JOB, build_definitions
    from srlm.progress import PROGRESS_LOGGER

    print(f"srlm: experiment '{cfg.experiment.name}' into {cfg.home} (Dagster instance {os.environ['DAGSTER_HOME']})")
    defs = build_definitions(cfg)
    job = defs.resolve_job_def(EXPERIMENT_JOB)
    selection = None
    if args.select:
        graph = defs.resolve_asset_graph()
        selection = sorted(dg.AssetSelection.from_string(args.select).resolve(graph))
        if not selection:
            return _fail(f"--select '{args.select}' matches no asset")
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            asset_selection=selection,
            run_config={"loggers": {PROGRESS_LOGGER: {}}},
        )
    if not result.success:
        failed = [e.step_key.replace("__", "/") for e in result.all_events if e.is_step_failure]
        return _fail(f"run {result.run_id} failed at {', '.join(failed) or 'an unknown step'}; see `srlm ui` for the full log", EXIT_FAILED)
    print(f"srlm: run {result.run_id} succeeded. Query it: srlm sql \"select * from checkpoints\"")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        prepare_environment(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    # A non-interactive shell starts background jobs with SIGINT ignored; restore it so Ctrl-C and
    # `kill` stop the UI (STACK-NOTES).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # dagster from this interpreter, not whichever `dagster` PATH finds (the venv may not be activated)
    argv = [sys.executable, "-m", "dagster", "dev", "-f", str(DEFINITIONS_FILE), "--working-directory", str(REPO_ROOT),
            "-h", args.host, "-p", str(args.port)]
    print(f"srlm: Dagster UI on http://{args.host}:{args.port}", flush=True)
    os.execv(sys.executable, argv)
    return 0  # not reached


def _home_for_sql(config: str | None) -> Path:
    if config is not None or os.environ.get(CONFIG_ENV):
        return load_config(config).home
    return Path(os.environ.get(HOME_ENV, ".srlm")).resolve()


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("-inf" if value < 0 else "inf" if value > 0 else "nan")
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    def clip(text: str) -> str:
        text = text.replace("\n", "\\n")
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[clip(_cell(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda values: " | ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    out = [line(columns), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return _cell(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


def cmd_sql(args: argparse.Namespace) -> int:
    from srlm.warehouse import ReadOnlyViolation, query_read_only

    try:
        home = _home_for_sql(args.config)
        columns, rows = query_read_only(home, args.query)
    except ConfigError as exc:
        return _fail(str(exc))
    except ReadOnlyViolation as exc:
        return _fail(str(exc))
    except FileNotFoundError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except Exception as exc:  # DuckDB's own errors (unknown table, syntax) are the user's answer
        return _fail(f"query failed: {exc}", EXIT_FAILED)
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[_cell(v) if v is not None else "" for v in row] for row in rows])
    elif args.format == "json":
        json.dump([{c: _json_value(v) for c, v in zip(columns, row)} for row in rows], sys.stdout, indent=1)
        print()
    else:
        print(format_table(columns, rows, args.max_width))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from srlm.report import build_report

    try:
        home = _home_for_sql(args.config)
        page = build_report(home, args.out)
    except ConfigError as exc:
        return _fail(str(exc))
    except FileNotFoundError as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(f"srlm: report written to {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlm", description="Self-Reasoning Language Models as a Dagster dataflow.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialize the experiment (in-process executor, progress on stdout)")
    run.add_argument("--config", help=f"experiment YAML (default: ${CONFIG_ENV} or the embedded default)")
    run.add_argument("--select", help="Dagster asset selection, e.g. 'key:data/*' or '+key:iter_1/selected'")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser("ui", help="start the Dagster UI for this project")
    ui.add_argument("--config", help="experiment YAML")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)

    sql = sub.add_parser("sql", help="read-only SQL on the warehouse")
    sql.add_argument("query")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument("--max-width", type=int, default=60, help="longest cell shown in table format")
    sql.add_argument("--config", help="experiment YAML (to find its home)")
    sql.set_defaults(func=cmd_sql)

    report = sub.add_parser("report", help="write a static HTML page with the experiment's tables and plots")
    report.add_argument("--config", help="experiment YAML (to find its home)")
    report.add_argument("--out", help="output folder (default: $SRLM_HOME/report)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
