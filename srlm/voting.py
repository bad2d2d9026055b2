"""Majority voting over sampled answers, and the sample counts N of inference-time scaling.

For each question the evaluation draws max(ns) answers once, independently and in order. The vote for
N samples uses the first N of them: a prefix of i.i.d. samples is itself an i.i.d. sample of size N,
so each accuracy-at-N is unbiased, and the curve costs one generation pass instead of one per N.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def majority_vote(predictions: Sequence[str | None]) -> str | None:
    """The most common non-None prediction; a tie goes to the one that appeared first; all None -> None."""
    counts = Counter(p for p in predictions if p is not None)
    if not counts:
        return None
    # Counter keeps first-insertion order and max() returns the first maximum: ties go to the earliest
    return max(counts, key=counts.__getitem__)


def check_sample_counts(samples: Sequence[int], knob: str) -> tuple[int, ...]:
    """The sample counts N, sorted; ValueError naming `knob` unless they are distinct positive integers
    (an N of 0 would vote over nothing, a negative one over a slice that drops the last answers)."""
    if not samples:
        raise ValueError(f"{knob} needs at least one sample count N")
    bad = [n for n in samples if n < 1]
    if bad:
        raise ValueError(f"{knob} must be positive integers, got {bad} in {list(samples)}")
    repeated = sorted(n for n, count in Counter(samples).items() if count > 1)
    if repeated:
        raise ValueError(f"{knob} must be distinct, got {repeated} repeated in {list(samples)}")
    return tuple(sorted(samples))
