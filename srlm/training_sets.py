"""Rows of the training sets and of the expansion work, as pure functions (the assets only wire them).

    iteration 0 (sft, M0):  answering on D0 (with whatever rationale D0 has), plus enriching on the
                            catalyst C for M0 only
    iteration t >= 1:       the previous training set, where each example selected at t answers with its new
                            rationale (examples not selected keep theirs, so a subset expansion never shrinks
                            the set); enriching rows are carried over unchanged
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping, Optional

import polars as pl

from srlm import prompts
from srlm.expansion import ExpansionTask
from srlm.registry import ANSWER, ENRICH

Render = Callable[[list[dict[str, str]]], str]  # chat messages -> the model's prompt text


def initial_rows(
    arm: str, instructions: Iterable[Mapping], catalyst: Optional[Iterable[Mapping]], render: Render
) -> list[dict]:
    """Iteration 0: answering rows for every D0 example, then (M0 only) one enriching row per catalyst record."""
    rows = [
        {
            "arm": arm,
            "iteration": 0,
            "task": ANSWER,
            "example_id": ex["example_id"],
            "rationale_id": ex["example_id"],
            "rationale_iteration": 0,
            "instruction": ex["instruction"],
            "input": ex["input"],
            "rationale": ex["rationale"],
            "response": ex["output"],
            "prompt": render(prompts.answer_messages(ex["instruction"], ex["input"])),
            "completion": prompts.answer_completion(ex["rationale"], ex["output"]),
        }
        for ex in instructions
    ]
    rows += [
        {
            "arm": arm,
            "iteration": 0,
            "task": ENRICH,
            "example_id": c["catalyst_id"],
            "rationale_id": None,
            "rationale_iteration": 0,
            "instruction": c["instruction"],
            "input": c["input"],
            "rationale": c["rationale"],
            "response": c["output"],
            "prompt": render(prompts.enrich_messages(c["instruction"], c["input"], c["short_rationale"], c["output"])),
            "completion": c["rationale"],
        }
        for c in catalyst or []
    ]
    return rows


def next_rows(arm: str, iteration: int, previous: Iterable[Mapping], chosen: Mapping[str, tuple[str, str]]) -> list[dict]:
    """Iteration t: `previous` with each answering example in `chosen` (example_id -> (candidate_id, text))
    trained on its new rationale."""
    rows = []
    for row in previous:
        row = {**row, "arm": arm, "iteration": iteration}
        if row["task"] == ANSWER and row["example_id"] in chosen:
            row["rationale_id"], row["rationale"] = chosen[row["example_id"]]
            row["rationale_iteration"] = iteration
            row["completion"] = prompts.answer_completion(row["rationale"], row["response"])
        rows.append(row)
    return rows


def chosen_rationales(selected: pl.DataFrame, candidates: pl.DataFrame) -> dict[str, tuple[str, str]]:
    """example_id -> (candidate_id, text) of each selected candidate: what `next_rows` trains on."""
    chosen = selected.join(candidates.select("candidate_id", "text"), on="candidate_id", how="left")
    return {r["example_id"]: (r["candidate_id"], r["text"]) for r in chosen.iter_rows(named=True)}


def answer_rows(examples: pl.DataFrame) -> pl.DataFrame:
    """The answering rows of a training set (its enriching rows left out)."""
    return examples.filter(pl.col("task") == ANSWER)


def training_metadata(examples: pl.DataFrame) -> dict:
    """What a training set asset reports: its rows per task, and its answering rationales."""
    answers = answer_rows(examples)
    with_rationale = answers.filter(pl.col("rationale") != "")
    return {
        "answer_examples": answers.height,
        "enrich_examples": examples.height - answers.height,
        "answers_with_rationale": with_rationale.height,
        "mean_rationale_chars": float(with_rationale["rationale"].str.len_chars().mean() or 0.0),
    }


def expansion_subset(example_ids: Iterable[str], size: int | None, seed: int) -> list[str]:
    """The examples expanded every iteration: the same seeded subset each time, so chains grow deep."""
    ordered = sorted(example_ids)
    if size is None or size >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, size))


def expansion_tasks(previous: Iterable[Mapping], size: int | None, seed: int) -> list[ExpansionTask]:
    """One task per expanded example: its current rationale (the parent) and its reference response."""
    current = {r["example_id"]: r for r in previous if r["task"] == ANSWER}
    return [
        ExpansionTask(e, current[e]["rationale_id"], current[e]["instruction"], current[e]["input"], current[e]["rationale"], current[e]["response"])
        for e in expansion_subset(current, size, seed)
    ]
