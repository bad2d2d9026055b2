"""Selection in SQL: sql/select_<selector>.sql keeps the best candidate per example."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from srlm.config import SELECTORS
from srlm.sqlfiles import run_sql, sql_version


def selection_sql_version() -> str:
    """Hash of every selection query: feeds the selection asset's code version."""
    return sql_version(*(f"select_{s}" for s in SELECTORS))


def select_best(
    candidates: pa.Table | str | Path, scores: pa.Table | str | Path, selector: str, margin: float | None = None
) -> pa.Table:
    """One row per example that keeps a candidate: example_id, iteration, candidate_id, selector, score,
    parent_score, parent_id, margin. Tables or Parquet paths both work."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector '{selector}'; choose one of {', '.join(SELECTORS)}")
    return run_sql(f"select_{selector}", {"candidates": candidates, "scores": scores}, {"margin": margin})
