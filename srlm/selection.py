"""Selection in SQL: sql/select_<selector>.sql keeps the best candidate per example."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa

from srlm.arms import SELECTORS
from srlm.sqlfiles import run_query, run_sql, sql_version

Source = pa.Table | str | Path  # an Arrow table or a Parquet file


def _check_selector(selector: str) -> str:
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector '{selector}'; choose one of {', '.join(SELECTORS)}")
    return selector


def selection_sql_version(selectors: Iterable[str] = SELECTORS) -> str:
    """Hash of the given selectors' queries (default: all): feeds the code version of the assets that run them."""
    return sql_version(*(f"select_{_check_selector(s)}" for s in selectors))


def select_best(candidates: Source, scores: Source, selector: str, margin: float | None = None) -> pa.Table:
    """One row per example that keeps a candidate: example_id, iteration, candidate_id, selector, score,
    parent_score, parent_id, margin. Tables or Parquet paths both work."""
    _check_selector(selector)
    return run_sql(f"select_{selector}", {"candidates": candidates, "scores": scores}, {"margin": margin})


def select_with_every_selector(candidates: Source, scores: Source, margin: float | None = None) -> pa.Table:
    """What each selector keeps: select_best's rows for every selector, one after the other."""
    return pa.concat_tables([select_best(candidates, scores, s, margin) for s in SELECTORS])


def count_examples(candidates: Source) -> int:
    """Distinct examples among the candidates (the denominator of a selection rate), counted by DuckDB."""
    result = run_query("SELECT count(DISTINCT example_id) AS n FROM candidates", {"candidates": candidates})
    return result["n"][0].as_py()
