"""Majority voting over sampled answers, and accuracy against the number of samples (inference-time scaling).

For each question the evaluation draws max(ns) answers once, independently and in order. The vote for
N samples uses the first N of them: a prefix of i.i.d. samples is itself an i.i.d. sample of size N,
so each accuracy-at-N is unbiased, and the curve costs one generation pass instead of one per N.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from srlm.answer_extraction import is_correct
from srlm.benchmarks import Question


def majority_vote(predictions: Sequence[str | None]) -> str | None:
    """The most common non-None prediction; a tie goes to the one that appeared first; all None -> None."""
    counts = Counter(p for p in predictions if p is not None)
    if not counts:
        return None
    # Counter keeps first-insertion order and max() returns the first maximum: ties go to the earliest
    return max(counts, key=counts.__getitem__)


def scaling_accuracy(
    samples: Mapping[str, Sequence[str | None]],
    gold: Mapping[str, Question],
    ns: Sequence[int],
) -> dict[int, float]:
    """Accuracy of the majority vote over the first n samples of every question, for each n in `ns`.

    `samples` maps question_id -> extracted predictions in sampling order; `gold` maps question_id ->
    Question (it may hold more questions than `samples`). Raises ValueError when `ns` or `samples` is
    empty, an n is not positive, a question is missing from `gold`, or a question has fewer than max(ns)
    samples.
    """
    if not ns or any(n < 1 for n in ns):
        raise ValueError(f"ns must be positive sample counts, got {list(ns)}")
    if not samples:
        raise ValueError("no questions to score")
    needed = max(ns)
    for question_id, predictions in samples.items():
        if question_id not in gold:
            raise ValueError(f"no gold question for {question_id!r}")
        if len(predictions) < needed:
            raise ValueError(f"{question_id} has {len(predictions)} samples; the largest N needs {needed}")
    return {
        n: sum(is_correct(gold[qid], majority_vote(preds[:n])) for qid, preds in samples.items()) / len(samples)
        for n in ns
    }
