"""Best-of-N selection over synthetic candidates: the project's SQL in DuckDB vs pandas.

    python bench/selection_speed.py                         # 1M and 10M candidate rows, 3 repeats
    python bench/selection_speed.py --sizes 1000000 --repeats 5

Data: N candidate rows (CANDIDATE_SCHEMA, --per-example candidates per example, written as the expand
asset writes them) and N + N/per-example score rows (srlm.scoring.score_schema(): one "candidate" row per candidate and one
"parent" row per example), as Parquet files in a temp dir that is removed at the end. Likelihood gains are
continuous random floats (so the best candidate of an example is never tied); 3% of candidates are
degenerate (length -inf) and 1% have a NaN likelihood, which the selection must skip.

Variants, each run in its own subprocess so the peaks do not mix (peak = ru_maxrss of that child, from
os.wait4; it includes the interpreter and its imports):
- project:          the project's path as it is: srlm.selection.select_best(candidates.parquet,
                    scores.parquet, "likelihood"), i.e. sql/select_likelihood.sql in a fresh in-memory DuckDB
                    opened with srlm.sqlfiles.DUCKDB_CONFIG (memory_limit 1GB, spills to the temp folder).
- duckdb-defaults:  the same query and the same views over the same files, on a connection opened with
                    --duckdb-config (default {}: DuckDB's own settings, memory_limit 80% of RAM).
- pandas:          read the same Parquet files (only the needed columns), merge candidates with their
                   scores, drop non-finite rows, groupby(example_id).idxmax() of the likelihood, then a left
                   merge for the parent's score: the same output columns as the SQL.
Time = the selection inside the worker (read + join + pick, result in memory); interpreter start-up and
imports are not counted. Variants are interleaved (the order rotates every repeat); medians are printed.
On the first size, the winners of every variant are compared example by example.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, peak_rss_mb

VARIANTS = ("project", "duckdb-defaults", "pandas")
DEFAULT_DUCKDB_CONFIG: dict = {}


# ------------------------------------------------------------------------------------------------ data


def write_synthetic(out: Path, n_rows: int, per_example: int, seed: int = 0, chunk: int = 1_000_000) -> tuple[Path, Path]:
    """candidates.parquet and scores.parquet with n_rows candidates, written chunk by chunk."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from srlm.expansion import CANDIDATE_SCHEMA
    from srlm.scoring import score_schema

    SCORE_SCHEMA = score_schema()

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cand_path, score_path = out / "candidates.parquet", out / "scores.parquet"

    def ids(prefix: str, values) -> pa.Array:
        text = pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), 10, "0")
        return pc.binary_join_element_wise(prefix, text, "")

    def const(value, n: int, type_: pa.DataType) -> pa.Array:
        return pa.repeat(pa.scalar(value, type_), n)

    with pq.ParquetWriter(cand_path, CANDIDATE_SCHEMA) as cw, pq.ParquetWriter(score_path, SCORE_SCHEMA) as sw:
        for start in range(0, n_rows, chunk):
            idx = np.arange(start, min(start + chunk, n_rows), dtype=np.int64)
            n = len(idx)
            example, sample = idx // per_example, idx % per_example
            cand_id, ex_id, parent_id = ids("c", idx), ids("e", example), ids("p", example)
            n_tokens = rng.integers(10, 161, n)
            finish = np.where(n_tokens == 160, "length", "stop")
            cw.write_table(
                pa.Table.from_arrays(
                    [
                        cand_id, ex_id, const(1, n, pa.int64()), parent_id, const("ckpt-base", n, pa.string()),
                        pa.array(sample), const(0, n, pa.int64()), const(0.8, n, pa.float64()),
                        const(0.95, n, pa.float64()), const("enrich-v1", n, pa.string()),
                        pc.binary_join_element_wise("synthetic rationale ", pc.cast(pa.array(idx), pa.string()), ""),
                        pa.array(n_tokens), pa.array(finish), const("run-bench", n, pa.string()),
                        pa.array(example // 16),
                    ],
                    schema=CANDIDATE_SCHEMA,
                )
            )
            length = n_tokens.astype(np.float64)
            length[rng.random(n) < 0.03] = -np.inf  # degenerate: never selected
            likelihood = rng.normal(0.0, 1.0, n)
            likelihood[rng.random(n) < 0.01] = np.nan  # unscorable: never selected
            with_r = rng.normal(-2.0, 0.5, n)
            sw.write_table(
                pa.Table.from_arrays(
                    [
                        cand_id, ex_id, const(1, n, pa.int64()), const("candidate", n, pa.string()),
                        pa.array(length), pa.array(likelihood), pa.array(rng.random(n)), pa.array(n_tokens),
                        pa.array(np.where(np.isinf(length), "repetition", None), pa.string()),
                        pa.array(with_r), pa.array(with_r - likelihood),
                    ],
                    schema=SCORE_SCHEMA,
                )
            )
        n_examples = -(-n_rows // per_example)
        for start in range(0, n_examples, chunk):  # one parent row per example
            ex = np.arange(start, min(start + chunk, n_examples), dtype=np.int64)
            n = len(ex)
            parent_lik = rng.normal(-0.5, 1.0, n)
            with_r = rng.normal(-2.0, 0.5, n)
            sw.write_table(
                pa.Table.from_arrays(
                    [
                        ids("p", ex), ids("e", ex), const(1, n, pa.int64()), const("parent", n, pa.string()),
                        pa.array(rng.integers(10, 161, n).astype(np.float64)), pa.array(parent_lik),
                        pa.array(rng.random(n)), pa.array(rng.integers(10, 161, n)), pa.nulls(n, pa.string()),
                        pa.array(with_r), pa.array(with_r - parent_lik),
                    ],
                    schema=SCORE_SCHEMA,
                )
            )
    return cand_path, score_path


# ---------------------------------------------------------------------------------------------- workers


def project_select(candidates: Path, scores: Path, duckdb_config: dict | None):
    """The project's selection. Without a config: srlm.selection.select_best as it is. With one: the same
    steps as srlm.sqlfiles.run_sql (views over the Parquet files, the same sql/select_likelihood.sql, the
    same $margin parameter), on duckdb.connect(config=duckdb_config)."""
    if duckdb_config is None:
        from srlm.selection import select_best

        return select_best(candidates, scores, "likelihood")
    import duckdb

    from srlm.sqlfiles import sql_text

    con = duckdb.connect(config=dict(duckdb_config))
    try:
        con.read_parquet(str(candidates)).create_view("candidates")
        con.read_parquet(str(scores)).create_view("scores")
        return con.sql(sql_text("select_likelihood"), params={"margin": None}).to_arrow_table()
    finally:
        con.close()


def pandas_select(candidates: Path, scores: Path):
    import numpy as np
    import pandas as pd

    c = pd.read_parquet(candidates, columns=["candidate_id", "example_id", "iteration", "parent_id", "n_tokens", "sample_index"])
    s = pd.read_parquet(scores, columns=["candidate_id", "example_id", "role", "length", "likelihood"])
    cand_scores = s.loc[s["role"] == "candidate", ["candidate_id", "length", "likelihood"]]
    parents = s.loc[s["role"] == "parent", ["candidate_id", "example_id", "likelihood"]].rename(
        columns={"candidate_id": "parent_id", "likelihood": "parent_score"}
    )
    del s
    m = c.merge(cand_scores, on="candidate_id", how="inner")
    del c, cand_scores
    m = m[np.isfinite(m["likelihood"].to_numpy()) & np.isfinite(m["length"].to_numpy())]
    best = m.loc[m.groupby("example_id", sort=True)["likelihood"].idxmax()]
    del m
    out = best.merge(parents, on=["parent_id", "example_id"], how="left")
    out = out.rename(columns={"likelihood": "score"})
    out["selector"] = "likelihood"
    out["margin"] = np.nan
    return out[["example_id", "iteration", "candidate_id", "selector", "score", "parent_score", "parent_id", "margin"]]


def worker(args: argparse.Namespace) -> None:
    # every variant imports the same modules before the clock and before the baseline reading
    import duckdb  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow as pa
    import pyarrow.parquet as pq

    import srlm.selection  # noqa: F401
    import srlm.sqlfiles  # noqa: F401

    base = peak_rss_mb()
    t0 = time.perf_counter()
    if args.worker == "pandas":
        result = pandas_select(Path(args.candidates), Path(args.scores))
        rows = len(result)
        winners = pa.table({"example_id": result["example_id"].to_numpy(), "candidate_id": result["candidate_id"].to_numpy()})
    else:
        config = json.loads(args.duckdb_config) if args.worker == "duckdb-defaults" else None
        result = project_select(Path(args.candidates), Path(args.scores), config)
        rows = result.num_rows
        winners = result.select(["example_id", "candidate_id"])
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    if args.winners:
        pq.write_table(winners, args.winners)
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_mb_self": peak, "baseline_mb": base}))


def run_child(extra: list[str], workdir: Path) -> tuple[int, str, str, float]:
    """Run this script in a child process; (exit code, stdout, stderr, that child's own peak RSS in MiB).

    The parent stays small (standard library only): on Linux a child's ru_maxrss starts from the RSS of the
    parent at fork time, so a heavy parent would inflate every child's peak."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *extra]
    # cwd = the temp dir: an in-memory DuckDB that spills writes its temp files under ./.tmp
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _drain(proc)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: peaks never mix across runs
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, err, usage.ru_maxrss / 1024.0


def _drain(proc: subprocess.Popen) -> tuple[str, str]:
    """Read stdout and stderr to the end without reaping the child (os.wait4 does that)."""
    import threading

    chunks: dict[str, str] = {}

    def read(name, stream):
        chunks[name] = stream.read()

    threads = [threading.Thread(target=read, args=(n, st)) for n, st in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return chunks["out"], chunks["err"]


def run_worker(variant: str, cand: Path, scores: Path, workdir: Path, duckdb_config: dict, winners: Path | None) -> dict:
    extra = ["--worker", variant, "--candidates", str(cand), "--scores", str(scores), "--duckdb-config", json.dumps(duckdb_config)]
    if winners is not None:
        extra += ["--winners", str(winners)]
    t0 = time.perf_counter()
    code, out, err, peak = run_child(extra, workdir)
    wall = time.perf_counter() - t0
    if code != 0:
        return {"error": f"exit {code}: {err.strip()[-600:]}", "peak_mb": peak, "wall": wall}
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_mb"] = peak
    report["wall"] = wall
    return report


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="candidate rows")
    ap.add_argument("--per-example", type=int, default=4, help="candidates per example (expand.candidates)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--duckdb-config", default=json.dumps(DEFAULT_DUCKDB_CONFIG), help="JSON config of the duckdb-defaults variant")
    ap.add_argument("--budget-mb", type=float, default=2048, help="peak the project's path must stay under")
    ap.add_argument("--tmp", help="parent folder for the synthetic data (default: the system temp dir)")
    # child modes (internal)
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--compare", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--candidates", help=argparse.SUPPRESS)
    ap.add_argument("--scores", help=argparse.SUPPRESS)
    ap.add_argument("--winners", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.generate:
        generate_child(args)
        return
    if args.compare:
        compare_winners(Path.cwd(), args.compare)
        return

    duckdb_config = json.loads(args.duckdb_config)
    print(f"cpu cores {os.cpu_count()}; duckdb-defaults config {duckdb_config or 'DuckDB defaults'}")
    summary = []
    for size_index, n_rows in enumerate(args.sizes):
        tmp = Path(tempfile.mkdtemp(prefix="srlm-bench-select-", dir=args.tmp))
        try:
            code, out, err, _ = run_child(["--generate", str(n_rows), "--per-example", str(args.per_example)], tmp)
            if code != 0:
                raise SystemExit(f"generating the data failed: {err.strip()[-2000:]}")
            print("\n" + out.strip())
            cand, scores = tmp / "candidates.parquet", tmp / "scores.parquet"
            results: dict[str, list[dict]] = {v: [] for v in args.variants}
            for rep in range(args.repeats):
                k = rep % len(args.variants)
                order = args.variants[k:] + args.variants[:k]  # rotate who goes first
                for variant in order:
                    winners = tmp / f"winners-{variant}.parquet" if (size_index == 0 and rep == 0) else None
                    r = run_worker(variant, cand, scores, tmp, duckdb_config, winners)
                    results[variant].append(r)
                    if "error" in r:
                        print(f"  repeat {rep + 1} {variant:>14}: FAILED ({r['error']}) peak {r['peak_mb']:.0f} MiB")
                    else:
                        print(
                            f"  repeat {rep + 1} {variant:>14}: {r['seconds']:6.2f} s, peak {r['peak_mb']:6.0f} MiB "
                            f"(after imports {r['baseline_mb']:.0f}), {r['rows']:,} winners"
                        )
            if size_index == 0:
                code, out, err, _ = run_child(["--compare", *args.variants], tmp)
                print(out.rstrip() if code == 0 else f"  comparing winners failed: {err.strip()[-1000:]}")
            summary.append((n_rows, results))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\nRESULT selection_speed (medians over repeats; peak = max over repeats, whole worker process)")
    for n_rows, results in summary:
        ok = {v: [r for r in rs if "error" not in r] for v, rs in results.items()}
        t = {v: median([r["seconds"] for r in rs]) for v, rs in ok.items() if rs}
        p = {v: max(r["peak_mb"] for r in rs) for v, rs in results.items() if rs}
        print(f"  {n_rows:,} rows:")
        for v in results:
            status = f"{t[v]:7.2f} s" if v in t else "  failed "
            verdict = ""
            if v != "pandas" and v in p:
                verdict = f"  ({'under' if p[v] < args.budget_mb else 'OVER'} the {args.budget_mb:.0f} MiB budget)"
            print(f"    {v:>14}: {status}, peak {p.get(v, float('nan')):7.0f} MiB{verdict}")
        for project in ("project", "duckdb-defaults"):
            if project in t and "pandas" in t:
                per_rep = [
                    a["seconds"] / b["seconds"]
                    for a, b in zip(results["pandas"], results[project])
                    if "error" not in a and "error" not in b
                ]
                print(
                    f"    pandas/{project}: time {median(per_rep):.2f}x (per repeat "
                    f"{', '.join(f'{x:.2f}' for x in per_rep)}), peak {p['pandas'] / p[project]:.2f}x"
                )
        if "project" in t and "duckdb-defaults" in t:
            per_rep = [
                a["seconds"] / b["seconds"]
                for a, b in zip(results["duckdb-defaults"], results["project"])
                if "error" not in a and "error" not in b
            ]
            print(
                f"    duckdb-defaults/project: time {median(per_rep):.2f}x, peak {p['duckdb-defaults'] / p['project']:.2f}x"
            )


def generate_child(args: argparse.Namespace) -> None:
    import duckdb
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    cand, scores = write_synthetic(Path.cwd(), args.generate, args.per_example)
    mb = (cand.stat().st_size + scores.stat().st_size) / 2**20
    print(
        f"{args.generate:,} candidates / {pq.ParquetFile(scores).metadata.num_rows:,} score rows "
        f"({-(-args.generate // args.per_example):,} examples): {mb:.0f} MiB of Parquet written in "
        f"{time.perf_counter() - t0:.0f} s (duckdb {duckdb.__version__})"
    )


def compare_winners(tmp: Path, variants: list[str]) -> None:
    import pyarrow.parquet as pq

    picked = {}
    for v in variants:
        path = tmp / f"winners-{v}.parquet"
        if path.is_file():
            t = pq.read_table(path)
            picked[v] = dict(zip(t["example_id"].to_pylist(), t["candidate_id"].to_pylist()))
    names = list(picked)
    for other in names[1:]:
        a, b = picked[names[0]], picked[other]
        same = sum(1 for e, c in a.items() if b.get(e) == c)
        print(
            f"  winners {names[0]} vs {other}: {same:,} of {len(a):,} examples pick the same candidate "
            f"({len(a):,} vs {len(b):,} examples with a winner){'  IDENTICAL' if same == len(a) == len(b) else '  DIFFER'}"
        )


if __name__ == "__main__":
    main()
