"""The `srlm` command: run the experiment, open the UI, query the warehouse.

    srlm run [--config FILE] [--select SELECTION] [--force]
                                                    materialize what is missing or stale into $SRLM_HOME
    srlm ui  [--config FILE] [--host H] [--port P]  the Dagster UI (127.0.0.1 unless told otherwise)
    srlm sql "QUERY" [--format table|csv|json]      read-only SQL on $SRLM_HOME/warehouse.duckdb
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from srlm.config import CONFIG_ENV, HOME_ENV, ConfigError, ExperimentConfig, load_config
from srlm.paths import DEFINITIONS_FILE, REPO_ROOT

EXIT_FAILED, EXIT_USAGE = 1, 2
# The Dagster instance's settings, written into a new home's dagster/ (edit them there); a home without them
# makes Dagster warn on every command. Kept here, not read from the checkout's dagster.yaml (the same
# settings, for a plain `dagster dev`), so that an installed copy has them too.
DAGSTER_INSTANCE_SETTINGS = "telemetry:\n  enabled: false\n"


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"srlm: {message}", file=sys.stderr)
    return code


def prepare_environment(config_path: str | None) -> ExperimentConfig:
    """Load (validate) the config and export what Dagster and its subprocesses need: the config file,
    SRLM_HOME and DAGSTER_HOME (with its dagster.yaml)."""
    if config_path is not None:
        config_path = str(Path(config_path).expanduser().resolve())
        os.environ[CONFIG_ENV] = config_path
    cfg = load_config(config_path)
    home = cfg.home
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(DAGSTER_INSTANCE_SETTINGS)
    nux = dagster_home / ".nux" / "nux.yaml"  # the UI's first-visit modal, already seen
    if not nux.exists():
        nux.parent.mkdir(exist_ok=True)
        nux.write_text("seen: 1\n")
    os.environ[HOME_ENV] = str(home)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return cfg


def whole_multi_assets(graph, keys) -> tuple[list, list]:
    """The asset keys of `keys` plus every other output of a multi-asset they belong to (the data assets
    write a table and its rejected rows in one step, which Dagster cannot split): (all, the added ones)."""
    whole = set(keys).union(*(graph.get(k).execution_set_asset_keys for k in keys))
    return sorted(whole), sorted(whole - set(keys))


def _resolve_selection(graph, text: str | None) -> tuple[list, str | None]:
    """The asset keys `--select` names (all materializable assets without it), or (_, an error message)."""
    import dagster as dg

    if not text:
        return sorted(graph.materializable_asset_keys), None
    try:
        chosen = dg.AssetSelection.from_string(text).resolve(graph)
    except dg.DagsterError as exc:
        return [], f"--select '{text}': {exc}"
    if not chosen:
        return [], f"--select '{text}' matches no asset"
    selection, added = whole_multi_assets(graph, chosen)
    if added:
        print(f"srlm: also selected {', '.join(k.to_user_string() for k in added)} (computed in one step with the selection)")
    return selection, None


def _keys_text(keys, limit: int = 12) -> str:
    names = [k.to_user_string() for k in keys]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _execute(defs, instance, keys: list, force: bool) -> tuple[bool, str]:
    """Materialize what is missing or stale among `keys`, in passes (srlm/resume.py); (success, last run id)."""
    from definitions import EXPERIMENT_JOB
    from srlm.progress import PROGRESS_LOGGER
    from srlm.resume import plan

    graph, job = defs.resolve_asset_graph(), defs.resolve_job_def(EXPERIMENT_JOB)
    done: set = set()
    run_id = ""
    for step in range(len(keys) + 1):
        todo = plan(instance, graph, [k for k in keys if k not in done], force=force and step == 0)
        if step == 0 and todo.kept:
            print(f"srlm: kept {len(todo.kept)} assets, up to date (same code version and upstream data): {_keys_text(todo.kept)}")
        if not todo.run:
            break
        by_reason: dict[str, list] = {}
        for key in todo.run:
            by_reason.setdefault(todo.reasons[key], []).append(key)
        for reason, group in by_reason.items():
            print(f"srlm: to materialize ({reason}): {_keys_text(group, limit=len(group))}")
        selection, _ = whole_multi_assets(graph, todo.run)
        result = job.execute_in_process(
            instance=instance, raise_on_error=False, asset_selection=selection, run_config={"loggers": {PROGRESS_LOGGER: {}}}
        )
        run_id = result.run_id
        if not result.success:
            failed = [e.step_key.replace("__", "/") for e in result.all_events if e.is_step_failure]
            print(f"srlm: run {run_id} failed at {', '.join(failed) or 'an unknown step'}; see `srlm ui` for the full log", file=sys.stderr)
            return False, run_id
        done.update(selection)
    return True, run_id


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = prepare_environment(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    import dagster as dg

    from definitions import build_definitions
    from srlm.checkpoints import remove_leftovers
    from srlm.run_lock import RunLocked, acquire, describe

    dagster_home = os.environ["DAGSTER_HOME"]
    try:
        lock = acquire(dagster_home, " ".join(["srlm", *sys.argv[1:]]))
    except RunLocked as exc:
        return _fail(str(exc), EXIT_FAILED)
    try:
        if lock.previous:
            print(f"srlm: cleared the lock of a run that is no longer active ({describe(lock.previous)})")
        storage = cfg.paths.open_storage()
        if removed := remove_leftovers(cfg.home, storage):
            print(f"srlm: removed {len(removed)} half-written files or folders of an interrupted run: {', '.join(p.name for p in removed[:5])}")
        elsewhere = f"; tables, shards and checkpoints in {storage.root}" if cfg.paths.storage else ""
        print(f"srlm: experiment '{cfg.experiment.name}' into {cfg.home} (Dagster instance {dagster_home}{elsewhere})")
        defs = build_definitions(cfg)
        keys, error = _resolve_selection(defs.resolve_asset_graph(), args.select)
        if error:
            return _fail(error)
        with dg.DagsterInstance.get() as instance:
            ok, run_id = _execute(defs, instance, keys, args.force)
    finally:
        lock.release()
    if not ok:
        return EXIT_FAILED
    print(f"srlm: {'run ' + run_id + ' succeeded' if run_id else 'nothing to do: every asset is up to date'}.")
    _print_answer(cfg.home)
    print('Query it: srlm sql "select * from eval.comparison"; srlm report; srlm ui')
    return 0


def _print_answer(home: Path) -> None:
    """The experiment's answer (srlm.report's headline), when the comparison is materialized."""
    import duckdb

    from srlm.report import headline_query
    from srlm.warehouse import query_read_only

    try:
        columns, rows = query_read_only(home, headline_query())
    except (FileNotFoundError, duckdb.CatalogException):  # nothing compared yet (e.g. a --select run)
        return
    for row in rows:
        print(f"  {row[columns.index('sentence')]}")


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        prepare_environment(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    # A non-interactive shell starts background jobs with SIGINT ignored, and dagster dev started that way
    # ignores SIGINT and SIGTERM; restore the defaults (inherited through exec) so Ctrl-C and `kill` stop the UI.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    # dagster from this interpreter, not whichever `dagster` PATH finds (the venv may not be activated)
    argv = [sys.executable, "-m", "dagster", "dev", "-f", str(DEFINITIONS_FILE), "--working-directory", str(REPO_ROOT),
            "-h", args.host, "-p", str(args.port)]
    print(f"srlm: Dagster UI on http://{args.host}:{args.port}", flush=True)
    os.execv(sys.executable, argv)
    return 0  # not reached


def _home_for_sql(config: str | None) -> Path:
    """The home whose catalog `srlm sql` and `srlm report` read; the storage its views read is recorded there."""
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
    line = lambda values: " | ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()
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
    run.add_argument("--select", help="Dagster asset selection, e.g. 'key:data/*' or '+key:srlm_likelihood_iter_1/selected'")
    run.add_argument("--force", action="store_true", help="recompute every selected asset, even those up to date")
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
