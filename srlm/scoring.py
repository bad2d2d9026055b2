"""Scoring: every candidate (and every parent rationale) gets all three selector scores.

Parent rows (role = 'parent', candidate_id = the parent's id) let selection compare a winner with the
rationale it enriched (the optional margin). Likelihood contexts use the answering template:
chat(x) + "<think>r</think>\\n", continuation y; the baseline is the same with an empty think block,
so an empty parent rationale scores exactly 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from srlm import prompts, selectors

SCORE_SCHEMA = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("arm", pa.string()),
        ("example_id", pa.string()),
        ("iteration", pa.int64()),
        ("role", pa.string()),
        ("length", pa.float64()),
        ("likelihood", pa.float64()),
        ("consistency", pa.float64()),
        ("n_tokens", pa.int64()),
        ("degenerate", pa.string()),
        ("logp_with_rationale", pa.float64()),
        ("logp_without", pa.float64()),
    ]
)


@dataclass(frozen=True)
class Scorable:
    candidate_id: str
    example_id: str
    role: str  # "candidate" | "parent"
    text: str
    finish_reason: str


@dataclass(frozen=True)
class Reference:
    """What the likelihood selector conditions on: the instruction and the reference response."""

    instruction: str
    input: str
    output: str


def likelihood_context(engine, ref: Reference, rationale: str) -> str:
    return engine.render_chat(prompts.answer_messages(ref.instruction, ref.input)) + prompts.think_block(rationale) + "\n"


def score(
    items: Sequence[Scorable],
    references: dict[str, Reference],
    engine,
    iteration: int,
    arm: str,
    adapter: str | None,
    ngram: int,
    max_repeated_fraction: float,
) -> pa.Table:
    """All three scores for candidates and parents (one row each)."""
    n_tokens = engine.count_tokens([it.text for it in items]) if items else []
    example_ids = sorted({it.example_id for it in items})
    requests = [(likelihood_context(engine, references[e], ""), references[e].output) for e in example_ids]
    requests += [(likelihood_context(engine, references[it.example_id], it.text), references[it.example_id].output) for it in items]
    logps = engine.logprobs(requests, adapter=adapter) if requests else []
    baseline = {e: lp.mean for e, lp in zip(example_ids, logps[: len(example_ids)])}
    with_rationale = [lp.mean for lp in logps[len(example_ids):]]

    candidates_by_example: dict[str, list[Scorable]] = defaultdict(list)
    for it in items:
        if it.role == "candidate":
            candidates_by_example[it.example_id].append(it)
    texts_by_example = {e: [c.text for c in cands] for e, cands in candidates_by_example.items()}
    consistency: dict[tuple[str, str], float] = {}
    for example_id, cands in candidates_by_example.items():
        for it, value in zip(cands, selectors.consistency_scores(texts_by_example[example_id])):
            consistency[(it.candidate_id, it.role)] = value

    rows = []
    for it, n, logp in zip(items, n_tokens, with_rationale, strict=True):
        reason = selectors.degeneration(it.text, it.finish_reason, ngram, max_repeated_fraction)
        if it.role == "parent" and not it.text.strip():
            reason = None  # an original example without a rationale is a valid (empty) parent
        cons = consistency.get((it.candidate_id, it.role))
        if cons is None:
            cons = selectors.consistency_to(it.text, texts_by_example.get(it.example_id, []))
        rows.append(
            {
                "candidate_id": it.candidate_id,
                "arm": arm,
                "example_id": it.example_id,
                "iteration": iteration,
                "role": it.role,
                "length": selectors.length_score(n, reason),
                "likelihood": selectors.likelihood_gain(logp, baseline[it.example_id]),
                "consistency": cons,
                "n_tokens": n,
                "degenerate": reason,
                "logp_with_rationale": logp,
                "logp_without": baseline[it.example_id],
            }
        )
    return pa.Table.from_pylist(rows, schema=SCORE_SCHEMA)
