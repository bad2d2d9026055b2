"""Selection in SQL: each selector's query (sql/select_<selector>.sql) keeps the best candidate per example."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import polars as pl
import pyarrow as pa

from srlm.registry import get_selector, selector_names
from srlm.sqlfiles import run_query

Source = pa.Table | str | Path  # an Arrow table or a Parquet file


def selection_sql_version(selectors: Iterable[str] | None = None) -> str:
    """Hash of the given selectors' queries (default: every registered one): feeds the code version of the
    assets that run them."""
    names = selector_names() if selectors is None else selectors
    return hashlib.sha256("\x1f".join(get_selector(s).query() for s in names).encode()).hexdigest()[:12]


def select_best(candidates: Source, scores: Source, selector: str, margin: float | None = None) -> pa.Table:
    """One row per example that keeps a candidate: example_id, iteration, candidate_id, selector, score,
    parent_score, parent_id, margin. Tables or Parquet paths both work."""
    query = get_selector(selector).query()
    return run_query(query, {"candidates": candidates, "scores": scores}, {"margin": margin})


def select_with_every_selector(candidates: Source, scores: Source, margin: float | None = None) -> pa.Table:
    """What each selector keeps: select_best's rows for every registered selector, one after the other."""
    return pa.concat_tables([select_best(candidates, scores, s, margin) for s in selector_names()])


def count_examples(candidates: Source) -> int:
    """Distinct examples among the candidates (the denominator of a selection rate), counted by DuckDB."""
    result = run_query("SELECT count(DISTINCT example_id) AS n FROM candidates", {"candidates": candidates})
    return result["n"][0].as_py()


def agreement(choices: pl.DataFrame) -> int:
    """Examples where every registered selector kept a candidate, and the same one."""
    per_example = choices.group_by("example_id").agg(pl.len().alias("kept"), pl.col("candidate_id").n_unique().alias("distinct"))
    return per_example.filter((pl.col("kept") == len(selector_names())) & (pl.col("distinct") == 1)).height


def selection_metadata(selected: pl.DataFrame, examples: int, selector: str, margin: float | None) -> dict:
    """What a selection asset reports: how many examples kept a candidate, and the mean scores."""
    return {
        "selector": selector,
        "margin": margin if margin is not None else "none",
        "examples": examples,
        "selected": selected.height,
        "selection_rate": selected.height / examples if examples else 0.0,
        "mean_score": float(selected["score"].mean() or 0.0) if selected.height else 0.0,
        "mean_parent_score": float(selected["parent_score"].mean() or 0.0) if selected.height else 0.0,
    }
