"""Evaluating one model (base or base + LoRA adapter) on benchmark questions, by either protocol.

- generate:      zero-shot chat prompt; the model writes <think>reasoning</think> and an answer; the answer
                 is extracted by srlm.answer_extraction's documented rules. max(N) answers are sampled once
                 per question; the vote for each N uses the first N of them (srlm.voting). The row of N
                 stores that vote as `prediction`, the N extracted answers as `sample_predictions`, and
                 as `completion` the first of those N completions whose answer is the vote (the first
                 completion when none could be read).
- loglikelihood: multiple choice: the choice whose continuation has the highest total log-probability
                 (lm-evaluation-harness's "acc"); deterministic, so only N = 1. The row also holds the
                 harness's "acc_norm" choice (`prediction_norm`, `correct_norm`; see `acc_norm_choice`).

Rows: one per question and N, with the columns of the `evals` view (docs/design.md, "Contracts").
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from srlm.answer_extraction import extract_answer, is_correct
from srlm.benchmarks import Question, generation_messages, loglikelihood_requests, question_from_row
from srlm.engines.types import Engine, SamplingParams
from srlm.voting import majority_vote


@dataclass(frozen=True)
class EvalSettings:
    samples: tuple[int, ...]  # the N of inference-time scaling
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


def evaluate_generate(
    questions: Sequence[Question], engine: Engine, adapter: str | None, settings: EvalSettings
) -> list[dict]:
    if not questions:
        return []
    params = SamplingParams(
        n=max(settings.samples),
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
    )
    outputs = engine.generate([generation_messages(q) for q in questions], params, adapter=adapter)
    rows = []
    for q, out in zip(questions, outputs, strict=True):
        predictions = [extract_answer(q, c.text) for c in out.completions]
        for n in sorted(settings.samples):
            vote = majority_vote(predictions[:n])
            # the first of the N completions that gave the vote: the row's text shows how its prediction came
            voter = predictions.index(vote) if vote is not None else 0
            rows.append(
                {
                    "benchmark": q.benchmark,
                    "question_id": q.question_id,
                    "protocol": "generate",
                    "n_samples": n,
                    "prediction": vote,
                    "correct": is_correct(q, vote),
                    "gold": q.answer,
                    "completion": out.completions[voter].text,
                    "sample_predictions": predictions[:n],
                    "choice_logprobs": None,
                    "prediction_norm": None,
                    "correct_norm": None,
                }
            )
    return rows


def evaluate_loglikelihood(questions: Sequence[Question], engine: Engine, adapter: str | None) -> list[dict]:
    requests, spans = [], []
    for q in questions:
        reqs = loglikelihood_requests(q)
        spans.append((len(requests), len(reqs)))
        requests += reqs
    logps = engine.logprobs(requests, adapter=adapter) if requests else []
    rows = []
    for q, (start, count) in zip(questions, spans):
        totals = [lp.total for lp in logps[start : start + count]]
        best = max(range(count), key=totals.__getitem__)  # first index wins ties
        prediction = q.labels[best]
        norm = acc_norm_choice(totals, [continuation for _, continuation in requests[start : start + count]])
        rows.append(
            {
                "benchmark": q.benchmark,
                "question_id": q.question_id,
                "protocol": "loglikelihood",
                "n_samples": 1,
                "prediction": prediction,
                "correct": best == q.gold_index,
                "gold": q.answer,
                "completion": q.choices[best],
                "sample_predictions": [prediction],
                "choice_logprobs": totals,
                "prediction_norm": q.labels[norm],
                "correct_norm": norm == q.gold_index,
            }
        )
    return rows


# lm-evaluation-harness puts this between context and choice: each continuation is TARGET_DELIMITER + choice
TARGET_DELIMITER = " "


def acc_norm_choice(totals: Sequence[float], continuations: Sequence[str]) -> int:
    """The choice of lm-evaluation-harness's acc_norm (0.4.13, api/task.py, multiple_choice process_results):
    np.argmax(total log p / len(choice)), the length in characters (Python's len; acc_bytes would use UTF-8
    bytes) of the choice's text, i.e. the continuation without the target delimiter. np.argmax: the first
    index wins ties."""
    lengths = np.array([len(c.removeprefix(TARGET_DELIMITER)) for c in continuations], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty choice divides by 0, as in the harness
        return int(np.argmax(np.array(totals, dtype=float) / lengths))


def evaluate(
    questions_by_benchmark: dict[str, Sequence[Question]],
    protocols: dict[str, str],
    engine: Engine,
    adapter: str | None,
    settings: EvalSettings,
    log: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    """Rows of every benchmark, in the given order. The questions of all benchmarks of one protocol go to the
    engine in one call (one Ray job each with the ray executor, instead of one per benchmark)."""
    asked: dict[str, list[Question]] = defaultdict(list)
    for benchmark, questions in questions_by_benchmark.items():
        asked[protocols[benchmark]] += questions
    answered = evaluate_generate(asked["generate"], engine, adapter, settings) if asked["generate"] else []
    answered += evaluate_loglikelihood(asked["loglikelihood"], engine, adapter) if asked["loglikelihood"] else []
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for row in answered:
        by_benchmark[row["benchmark"]].append(row)
    rows = []
    for benchmark, questions in questions_by_benchmark.items():
        part = by_benchmark[benchmark]
        accuracy = accuracy_at_smallest_n(part).get(benchmark, 0.0)
        log(f"{benchmark} ({protocols[benchmark]}): {len(questions)} questions, accuracy {accuracy:.3f}")
        rows += part
    return rows


def questions_by_benchmark(questions: pl.DataFrame, benchmarks: Iterable[str]) -> dict[str, list[Question]]:
    """The sampled questions of an eval/questions table, per benchmark, in the given order."""
    sampled = questions.filter(pl.col("sampled"))
    return {name: [question_from_row(r) for r in sampled.filter(pl.col("benchmark") == name).iter_rows(named=True)] for name in benchmarks}


def accuracy_at_smallest_n(rows: Iterable[Mapping]) -> dict[str, float]:
    """Accuracy per benchmark at its smallest N (one sample unless the config starts higher), over rows
    with the `evals` columns benchmark, n_samples and correct; benchmarks in sorted order."""
    smallest: dict[str, int] = {}
    correct: dict[tuple[str, int], list[bool]] = defaultdict(list)
    for row in rows:
        benchmark, n = row["benchmark"], row["n_samples"]
        smallest[benchmark] = min(n, smallest.get(benchmark, n))
        correct[benchmark, n].append(bool(row["correct"]))
    return {b: sum(correct[b, n]) / len(correct[b, n]) for b, n in sorted(smallest.items())}
