"""eval.comparison: every pair of checkpoints the experiment compares (srlm.arms.comparison_pairs), per
benchmark, N and metric, on the questions both answered: paired difference with a bootstrap interval,
McNemar's exact p-value, a verdict, and the smallest difference detectable at that n (srlm.stats)."""

from __future__ import annotations

from typing import Sequence

import polars as pl

from srlm import stats
from srlm.arms import Pair, Stage

# metric -> the evals column holding each question's outcome (acc_norm exists for loglikelihood benchmarks)
METRICS = {"acc": "correct", "acc_norm": "correct_norm"}


def _outcomes(evals: pl.DataFrame, stage: Stage) -> pl.DataFrame:
    return evals.filter((pl.col("arm") == stage.arm) & (pl.col("iteration") == stage.iteration))


def _pair_rows(pair: Pair, evals: pl.DataFrame, resamples: int, seed: int) -> list[dict]:
    mine, theirs = _outcomes(evals, pair.candidate), _outcomes(evals, pair.reference)
    if mine.is_empty() or theirs.is_empty():
        return []
    on = ["benchmark", "n_samples", "question_id"]
    rows = []
    for metric, column in METRICS.items():
        if column not in evals.columns:
            continue
        joined = mine.select(*on, pl.col(column).alias("b"), "checkpoint_id").join(
            theirs.select(*on, pl.col(column).alias("a"), pl.col("checkpoint_id").alias("reference_checkpoint_id")), on=on
        ).drop_nulls(["a", "b"])
        for (benchmark, n_samples), group in sorted(joined.group_by(["benchmark", "n_samples"]), key=lambda g: g[0]):
            group = group.sort("question_id")
            c = stats.compare(group["a"].to_list(), group["b"].to_list(), resamples=resamples, seed=seed)
            rows.append(
                {
                    "checkpoint_id": group["checkpoint_id"][0],
                    "checkpoint": pair.candidate.label,
                    "arm": pair.candidate.arm,
                    "iteration": pair.candidate.iteration,
                    "reference_checkpoint_id": group["reference_checkpoint_id"][0],
                    "reference": pair.reference.label,
                    "relation": pair.relation,
                    "benchmark": benchmark,
                    "n_samples": n_samples,
                    "metric": metric,
                    "questions": c.n,
                    "accuracy": c.accuracy_b,
                    "reference_accuracy": c.accuracy_a,
                    "difference": c.difference,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                    "p_value": c.p_value,
                    "verdict": c.verdict,
                    "min_detectable_difference": c.mde,
                    "sentence": stats.verdict_sentence(c, pair.candidate.label, pair.reference.label, f"{benchmark} ({metric}, N={n_samples})"),
                }
            )
    return rows


def comparison_rows(evals: pl.DataFrame, pairs: Sequence[Pair], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """One row per (pair, benchmark, N, metric) that both checkpoints of the pair were evaluated on."""
    return [row for pair in pairs for row in _pair_rows(pair, evals, resamples, seed)]
