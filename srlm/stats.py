"""Statistics for comparing two checkpoints evaluated on the same benchmark questions.

Each question yields a paired binary outcome (model A correct?, model B correct?). Pairing matters:
questions differ far more in difficulty than checkpoints do, so only the discordant questions (one
model right, the other wrong) carry information about which model is better.

    c = compare(correct_sft, correct_m2)           # difference = accuracy(b) - accuracy(a)
    verdict_sentence(c, "M2 (srlm/likelihood)", "sft", "arc_challenge")

- mcnemar_exact: exact McNemar test (binomial test on the discordant pairs).
- paired_bootstrap_ci: percentile interval of the accuracy difference over resampled questions.
- minimum_detectable_difference / questions_needed: power of the paired test (Connor 1987,
  normal approximation of McNemar's test), so "no detectable difference" says how blind the test was.
The verdict of compare follows the bootstrap interval; the McNemar p-value is reported beside it.
Everything is deterministic: the bootstrap is seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

LEVEL = 0.95  # confidence level of compare's interval
ALPHA = 1 - LEVEL
POWER = 0.8
# Power calculations never use a discordant rate below this: with zero (or very little) observed
# discordance the formula would claim near-infinite sensitivity from a handful of questions.
DISCORDANCE_FLOOR = 0.1
# Above this many discordant pairs the binomial tail is summed in log space: exact integer sums
# cost O(n) big-integer operations of n bits each, and their float terms underflow past ~1074.
EXACT_TAIL_MAX_N = 1000
# Bootstrap index blocks hold at most this many entries, so memory stays bounded for big benchmarks.
BOOTSTRAP_BLOCK = 1 << 22
# verdict_sentence says how many questions this difference (5 points) would need when the test was blind.
TARGET_DIFFERENCE = 0.05


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of paired outcomes."""

    n: int
    both_correct: int
    only_a: int
    only_b: int
    both_wrong: int


@dataclass(frozen=True)
class Comparison:
    """Model B against model A on the same questions; difference = accuracy_b - accuracy_a."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str  # "better" | "worse" | "no detectable difference" (B relative to A)
    mde: float  # minimum detectable |difference| at n with 80% power; inf when none is
    discordant_rate: float  # observed (only_a + only_b) / n, before the power floor


def _outcomes(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Both outcome vectors as 1-D bool arrays; ValueError unless non-empty, equal length and 0/1 valued."""
    arrays = []
    for name, values in (("a", a), ("b", b)):
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a flat sequence of outcomes, got shape {arr.shape}")
        # refuse e.g. scores or counts: casting 2 or 0.5 to True would silently count them as correct
        if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans (or 0/1)")
        arrays.append(arr.astype(bool))
    if len(arrays[0]) != len(arrays[1]):
        raise ValueError(f"a and b must cover the same questions: {len(arrays[0])} != {len(arrays[1])} outcomes")
    if len(arrays[0]) == 0:
        raise ValueError("no questions to compare")
    return arrays[0], arrays[1]


def paired_counts(a: Sequence[bool], b: Sequence[bool]) -> PairedCounts:
    """The 2x2 table of paired outcomes; a[i] and b[i] are the two models on question i."""
    x, y = _outcomes(a, b)
    return PairedCounts(
        n=len(x),
        both_correct=int(np.sum(x & y)),
        only_a=int(np.sum(x & ~y)),
        only_b=int(np.sum(~x & y)),
        both_wrong=int(np.sum(~x & ~y)),
    )


def _lower_tail_exact(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), with exact integer arithmetic."""
    total, term = 0, 1  # term = C(n, i), updated in place: avoids recomputing each binomial
    for i in range(k + 1):
        total += term
        term = term * (n - i) // (i + 1)
    return total / 2**n  # int / int is correctly rounded in Python, however large


def _lower_tail_log(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summed in log space (large n)."""
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
    top = max(log_terms)
    return math.exp(top + math.log(math.fsum(math.exp(t - top) for t in log_terms)) - n * math.log(2))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: 2 * the smaller binomial(discordant, 1/2) tail, capped at 1."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be non-negative, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0  # no discordant question: no evidence either way
    k = min(only_a, only_b)
    tail = _lower_tail_exact(k, n) if n <= EXACT_TAIL_MAX_N else _lower_tail_log(k, n)
    return min(1.0, 2 * tail)


def _resampled_differences(diff: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of `diff` over `resamples` resamples of its indices with replacement, in bounded blocks."""
    n = len(diff)
    rows = max(1, BOOTSTRAP_BLOCK // n)
    means = []
    for start in range(0, resamples, rows):
        # one index draw serves both models: diff[i] = b[i] - a[i] keeps each question's pairing
        idx = rng.integers(0, n, size=(min(rows, resamples - start), n))
        means.append(diff[idx].mean(axis=1))
    return np.concatenate(means)


def paired_bootstrap_ci(
    a: Sequence[bool], b: Sequence[bool], resamples: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float, float]:
    """(accuracy(b) - accuracy(a), low, high): the difference (positive = b better) and its percentile interval."""
    if resamples < 1000:
        raise ValueError(f"resamples must be >= 1000 for stable interval ends, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x, y = _outcomes(a, b)
    diff = y.astype(np.int8) - x.astype(np.int8)
    rng = np.random.Generator(np.random.PCG64(seed))
    low, high = np.quantile(_resampled_differences(diff, resamples, rng), [(1 - level) / 2, (1 + level) / 2])
    return float(diff.mean()), float(low), float(high)


def _power_inputs(discordant_rate: float, alpha: float, power: float) -> tuple[float, float, float]:
    """(psi, z_alpha/2, z_beta): the floored discordant rate and the two normal quantiles of Connor's formula."""
    if not 0 <= discordant_rate <= 1:
        raise ValueError(f"discordant_rate must be in [0, 1], got {discordant_rate}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    normal = NormalDist()
    return max(discordant_rate, DISCORDANCE_FLOOR), normal.inv_cdf(1 - alpha / 2), normal.inv_cdf(power)


def _connor_n(d: float, psi: float, z_a: float, z_b: float) -> float:
    """Connor (1987): questions a paired test needs to detect difference d at discordant proportion psi."""
    return (z_a * math.sqrt(psi) + z_b * math.sqrt(psi - d * d)) ** 2 / (d * d)


def minimum_detectable_difference(n: int, discordant_rate: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest |accuracy difference| detected with `power` at n questions; inf if none can be (see below)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    psi, z_a, z_b = _power_inputs(discordant_rate, alpha, power)
    # |difference| <= psi always (it is only_b/n - only_a/n), and Connor's n(d) falls as d grows:
    # if even d = psi needs more than n questions, no difference is detectable at this n.
    if _connor_n(psi, psi, z_a, z_b) > n:
        return math.inf
    low, high = 0.0, psi  # n(low) > n >= n(high); bisect to float precision
    for _ in range(100):
        mid = (low + high) / 2
        if _connor_n(mid, psi, z_a, z_b) > n:
            low = mid
        else:
            high = mid
    return high


def questions_needed(difference: float, discordant_rate: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Questions a paired test needs to detect |difference| with `power` (Connor 1987, rounded up)."""
    psi, z_a, z_b = _power_inputs(discordant_rate, alpha, power)
    d = abs(difference)
    if not 0 < d <= psi:
        raise ValueError(f"|difference| must be in (0, discordant rate {psi}], got {difference}")
    return math.ceil(_connor_n(d, psi, z_a, z_b))


def _verdict(low: float, high: float) -> str:
    """B relative to A from the interval: only an interval excluding 0 is a finding."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no detectable difference"


def compare(a: Sequence[bool], b: Sequence[bool], resamples: int = 2000, seed: int = 0) -> Comparison:
    """Model b against model a on the same questions: accuracies, 95% interval, McNemar p, verdict, MDE."""
    counts = paired_counts(a, b)
    difference, low, high = paired_bootstrap_ci(a, b, resamples=resamples, seed=seed, level=LEVEL)
    discordant_rate = (counts.only_a + counts.only_b) / counts.n
    return Comparison(
        n=counts.n,
        accuracy_a=(counts.both_correct + counts.only_a) / counts.n,
        accuracy_b=(counts.both_correct + counts.only_b) / counts.n,
        difference=difference,
        ci_low=low,
        ci_high=high,
        p_value=mcnemar_exact(counts.only_a, counts.only_b),
        verdict=_verdict(low, high),
        mde=minimum_detectable_difference(counts.n, discordant_rate, ALPHA, POWER),
        discordant_rate=discordant_rate,
    )


def _points(x: float) -> str:
    """A proportion difference as signed percentage points, e.g. +6.0 (never -0.0)."""
    return f"{round(100 * x, 1) + 0.0:+.1f}"


def _p(p: float) -> str:
    """A p-value with two significant digits, or a bound when it is tiny."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _sensitivity(c: Comparison) -> str:
    """What a null result could have seen: the MDE at n, and the questions a 5-point difference needs."""
    if math.isinf(c.mde):
        clause = f"at n = {c.n} no difference is detectable with {POWER:.0%} power"
    else:
        clause = f"at n = {c.n} only differences above {100 * c.mde:.1f} points are detectable with {POWER:.0%} power"
    if math.isinf(c.mde) or c.mde > TARGET_DIFFERENCE:
        needed = questions_needed(TARGET_DIFFERENCE, c.discordant_rate, ALPHA, POWER)
        clause += f" (about {needed} questions would detect {100 * TARGET_DIFFERENCE:.0f} points)"
    return clause


def verdict_sentence(comparison: Comparison, what_b: str, what_a: str, benchmark: str) -> str:
    """One plain-English sentence: verdict, difference in points with its 95% interval, McNemar p, n."""
    c = comparison
    relation = {
        "better": f"is better than {what_a}",
        "worse": f"is worse than {what_a}",
        "no detectable difference": f"shows no detectable difference from {what_a}",
    }[c.verdict]
    numbers = (
        f"{_points(c.difference)} points [{LEVEL:.0%} CI {_points(c.ci_low)}, {_points(c.ci_high)}], "
        f"McNemar {_p(c.p_value)}, n = {c.n}"
    )
    if c.verdict == "no detectable difference":
        return f"{what_b} {relation} on {benchmark}: {numbers}; {_sensitivity(c)}."
    return f"{what_b} {relation} on {benchmark}: {numbers}."
