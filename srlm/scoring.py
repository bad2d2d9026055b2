"""Scoring: every candidate (and every parent rationale) gets every registered selector's score.

Parent rows (role = 'parent', candidate_id = the parent's id) let selection compare a winner with the
rationale it enriched (the optional margin). Likelihood contexts use the answering template:
chat(x) + "<think>r</think>\\n", continuation y; the baseline is the same with an empty think block,
so an empty parent rationale scores exactly 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import polars as pl
import pyarrow as pa

from srlm import prompts, selectors
from srlm.engines.types import Engine, Tokenizing
from srlm.registry import ANSWER, CANDIDATE, PARENT, SELECTORS, selector_names

_HEAD = [("candidate_id", pa.string()), ("arm", pa.string()), ("example_id", pa.string()), ("iteration", pa.int64()), ("role", pa.string())]
_TAIL = [("n_tokens", pa.int64()), ("degenerate", pa.string()), ("logp_with_rationale", pa.float64()), ("logp_without", pa.float64())]


def score_schema() -> pa.Schema:
    """The scores table: one float column per registered selector, between the row's identity and what
    scoring measured."""
    return pa.schema(_HEAD + [(name, pa.float64()) for name in selector_names()] + _TAIL)


@dataclass(frozen=True)
class Scorable:
    candidate_id: str
    example_id: str
    role: str  # CANDIDATE | PARENT
    text: str
    finish_reason: str


@dataclass(frozen=True)
class Reference:
    """What the likelihood selector conditions on: the instruction and the reference response."""

    instruction: str
    input: str
    output: str


def scoring_inputs(candidates: pl.DataFrame, previous_examples: pl.DataFrame) -> tuple[list[Scorable], dict[str, Reference]]:
    """The rationales to score, from a generation's candidates and the training set whose rationales they
    rewrote (its answering row of each expanded example: the parent), and each example's reference."""
    expanded = candidates["example_id"].unique().to_list()
    parents = previous_examples.filter((pl.col("task") == ANSWER) & pl.col("example_id").is_in(expanded))
    references = {r["example_id"]: Reference(r["instruction"], r["input"], r["response"]) for r in parents.iter_rows(named=True)}
    items = [Scorable(r["candidate_id"], r["example_id"], CANDIDATE, r["text"], r["finish_reason"]) for r in candidates.iter_rows(named=True)]
    items += [Scorable(r["rationale_id"], r["example_id"], PARENT, r["rationale"], "stop") for r in parents.iter_rows(named=True)]
    return items, references


def likelihood_context(engine: Tokenizing, ref: Reference, rationale: str) -> str:
    return engine.render_chat(prompts.answer_messages(ref.instruction, ref.input)) + prompts.think_block(rationale) + "\n"


def measure(items: Sequence[Scorable], references: dict[str, Reference], engine: Engine, adapter: str | None,
            ngram: int, max_repeated_fraction: float) -> list[selectors.Measured]:
    """What every selector scores from, per item: tokens, degeneration, the likelihood of the reference
    response with and without the rationale (the latter once per example), the example's candidates."""
    n_tokens = engine.count_tokens([it.text for it in items]) if items else []
    example_ids = sorted({it.example_id for it in items})
    requests = [(likelihood_context(engine, references[e], ""), references[e].output) for e in example_ids]
    requests += [(likelihood_context(engine, references[it.example_id], it.text), references[it.example_id].output) for it in items]
    logps = engine.logprobs(requests, adapter=adapter) if requests else []
    baseline = {e: lp.mean for e, lp in zip(example_ids, logps[: len(example_ids)])}
    siblings: dict[str, list[str]] = defaultdict(list)
    index: list[int | None] = []
    for it in items:
        index.append(len(siblings[it.example_id]) if it.role == CANDIDATE else None)
        if it.role == CANDIDATE:
            siblings[it.example_id].append(it.text)
    texts = {e: tuple(t) for e, t in siblings.items()}
    measured = []
    for it, n, logp, i in zip(items, n_tokens, logps[len(example_ids):], index, strict=True):
        reason = selectors.degeneration(it.text, it.finish_reason, ngram, max_repeated_fraction)
        if it.role == PARENT and not it.text.strip():
            reason = None  # an original example without a rationale is a valid (empty) parent
        measured.append(
            selectors.Measured(it.text, it.role, n, reason, logp.mean, baseline[it.example_id], texts.get(it.example_id, ()), i)
        )
    return measured


def score(
    items: Sequence[Scorable],
    references: dict[str, Reference],
    engine: Engine,
    iteration: int,
    arm: str,
    adapter: str | None,
    ngram: int,
    max_repeated_fraction: float,
) -> pa.Table:
    """Every registered selector's score for candidates and parents (one row each)."""
    rows = [
        {
            "candidate_id": it.candidate_id,
            "arm": arm,
            "example_id": it.example_id,
            "iteration": iteration,
            "role": it.role,
            **{name: selector.scorer(m) for name, selector in SELECTORS.items()},
            "n_tokens": m.n_tokens,
            "degenerate": m.degenerate,
            "logp_with_rationale": m.logp_with_rationale,
            "logp_without": m.logp_without,
        }
        for it, m in zip(items, measure(items, references, engine, adapter, ngram, max_repeated_fraction))
    ]
    return pa.Table.from_pylist(rows, schema=score_schema())
