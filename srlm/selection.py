"""Selection in SQL: runs sql/select_<selector>.sql with DuckDB over candidates and scores."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pyarrow as pa

from srlm.config import SELECTORS
from srlm.paths import SQL_DIR


def selection_sql(selector: str) -> str:
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector '{selector}'; choose one of {', '.join(SELECTORS)}")
    return (SQL_DIR / f"select_{selector}.sql").read_text()


def selection_sql_version() -> str:
    """Hash of every selection query: feeds the selection asset's code version."""
    text = "\x1f".join(selection_sql(s) for s in SELECTORS)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def select_best(
    candidates: pa.Table | str | Path, scores: pa.Table | str | Path, selector: str, margin: float | None = None
) -> pa.Table:
    """One row per example that keeps a candidate: example_id, iteration, candidate_id, selector, score,
    parent_score, parent_id, margin. Tables or Parquet paths both work."""
    con = duckdb.connect()
    try:
        for name, source in (("candidates", candidates), ("scores", scores)):
            if isinstance(source, pa.Table):
                con.register(name, source)
            else:
                con.read_parquet(str(source)).create_view(name)
        return con.sql(selection_sql(selector), params={"margin": margin}).to_arrow_table()
    finally:
        con.close()
