"""Paired-comparison statistics: exact McNemar, paired bootstrap interval, power (MDE), verdict sentence."""

import math
from fractions import Fraction

import numpy as np
import pytest

from srlm.stats import (
    Comparison,
    compare,
    mcnemar_exact,
    minimum_detectable_difference,
    paired_bootstrap_ci,
    paired_counts,
    questions_needed,
    verdict_sentence,
)


def binomial_two_sided(b: int, c: int) -> float:
    """Reference exact McNemar p from the definition: 2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2), capped at 1."""
    n = b + c
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def paired_sample(rng, n, p_both, p_only_a, p_only_b):
    """n paired outcomes drawn from the 2x2 cell probabilities (the rest is both wrong)."""
    cell = rng.choice(4, size=n, p=[p_both, p_only_a, p_only_b, 1 - p_both - p_only_a - p_only_b])
    return (cell == 0) | (cell == 1), (cell == 0) | (cell == 2)


def test_paired_counts_table():
    a = [True, True, False, False, True, False]
    b = [True, False, True, False, True, True]
    assert paired_counts(a, b).__dict__ == dict(n=6, both_correct=2, only_a=1, only_b=2, both_wrong=1)


@pytest.mark.parametrize("b, c, published", [(1, 9, 0.0215), (1, 7, 0.070)])
def test_mcnemar_published_examples(b, c, published):
    # (1, 9): 2 * 11/1024; (1, 7): Fagerland, Lydersen & Laake (2013), exact conditional p = 2 * 9/256
    assert mcnemar_exact(b, c) == pytest.approx(published, abs=5e-4)
    assert mcnemar_exact(b, c) == pytest.approx(binomial_two_sided(b, c), rel=1e-12)


@pytest.mark.parametrize("b, c", [(0, 5), (3, 12), (20, 35), (40, 10), (0, 1)])
def test_mcnemar_matches_the_binomial_and_is_symmetric(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(binomial_two_sided(b, c), rel=1e-12)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_equal_counts_and_no_discordance_give_one():
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_large_counts_use_log_space_accurately():
    # 1500 discordant pairs is past the exact-integer path; the reference is still exact
    assert mcnemar_exact(700, 800) == pytest.approx(binomial_two_sided(700, 800), rel=1e-9)
    assert mcnemar_exact(5000, 5000) == 1.0
    assert 0 <= mcnemar_exact(10, 5000) < 1e-300


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_bootstrap_interval_covers_the_true_difference():
    # correlated pairs: both right 45%, only A 10%, only B 16% -> true difference +6 points
    rng = np.random.default_rng(2024)
    truth, trials, covered = 0.16 - 0.10, 300, 0
    for seed in range(trials):
        a, b = paired_sample(rng, 200, 0.45, 0.10, 0.16)
        _, low, high = paired_bootstrap_ci(a, b, resamples=1000, seed=seed)
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 0.99


def test_bootstrap_difference_direction_and_interval_order():
    a = [False] * 50 + [True] * 50
    b = [True] * 80 + [False] * 20
    difference, low, high = paired_bootstrap_ci(a, b)
    assert difference == pytest.approx(0.8 - 0.5)  # accuracy(b) - accuracy(a)
    assert low <= difference <= high


def test_bootstrap_is_deterministic_given_the_seed():
    a, b = paired_sample(np.random.default_rng(0), 150, 0.4, 0.15, 0.2)
    assert paired_bootstrap_ci(a, b, seed=3) == paired_bootstrap_ci(a, b, seed=3)
    # resampled means sit on a grid of 1/150 steps, so two seeds may share ends; ten may not all
    assert len({paired_bootstrap_ci(a, b, seed=s) for s in range(10)}) > 1


def test_swapping_models_negates_the_difference():
    a, b = paired_sample(np.random.default_rng(1), 150, 0.4, 0.1, 0.2)
    difference, low, high = paired_bootstrap_ci(a, b, seed=5)
    swapped = paired_bootstrap_ci(b, a, seed=5)
    assert swapped == pytest.approx((-difference, -high, -low))


def test_identical_models_give_a_zero_interval_and_no_verdict():
    a = [True, False, True, True, False] * 20
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0, 0.0)
    c = compare(a, a)
    assert (c.difference, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert c.verdict == "no detectable difference"


def test_bootstrap_needs_enough_resamples():
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_ci([True, False], [False, True], resamples=999)


@pytest.mark.parametrize("function", [paired_counts, paired_bootstrap_ci, compare])
def test_empty_and_mismatched_inputs_are_refused(function):
    with pytest.raises(ValueError, match="no questions"):
        function([], [])
    with pytest.raises(ValueError, match="same questions"):
        function([True, False], [True])


def test_non_binary_outcomes_are_refused():
    with pytest.raises(ValueError, match="booleans"):
        paired_counts([0.7, 1.0], [1, 0])


def test_compare_verdicts_follow_the_interval():
    a, b = paired_sample(np.random.default_rng(7), 400, 0.4, 0.05, 0.2)  # B ahead by ~15 points
    better = compare(a, b)
    assert better.verdict == "better" and better.ci_low > 0 and better.p_value < 0.001
    assert better.accuracy_b - better.accuracy_a == pytest.approx(better.difference)
    worse = compare(b, a)
    assert worse.verdict == "worse" and worse.ci_high < 0 and worse.p_value == better.p_value


def test_mde_decreases_with_n_and_halves_when_n_quadruples():
    mdes = [minimum_detectable_difference(n, 0.3) for n in (100, 200, 400, 1600)]
    assert mdes == sorted(mdes, reverse=True)
    assert 0.45 <= mdes[3] / mdes[2] <= 0.55


@pytest.mark.parametrize("n, rate", [(100, 0.3), (250, 0.2), (1000, 0.15), (5000, 0.4)])
def test_questions_needed_inverts_the_mde(n, rate):
    assert questions_needed(minimum_detectable_difference(n, rate), rate) == pytest.approx(n, rel=0.02)


def test_questions_needed_by_hand():
    # Connor (1987), psi = 0.2, d = 0.1: (1.95996 * sqrt(0.2) + 0.84162 * sqrt(0.19))^2 / 0.01 = 154.6
    assert questions_needed(0.1, 0.2) == 155
    assert questions_needed(-0.1, 0.2) == 155


def test_discordance_floor_keeps_the_mde_finite():
    assert minimum_detectable_difference(500, 0.0) == minimum_detectable_difference(500, 0.1)
    assert 0 < minimum_detectable_difference(500, 0.0) < 0.1


def test_mde_is_infinite_when_no_difference_can_reach_the_power():
    assert math.isinf(minimum_detectable_difference(10, 0.2))


def test_impossible_differences_are_refused():
    with pytest.raises(ValueError):
        questions_needed(0.3, 0.2)  # |difference| cannot exceed the discordant rate
    with pytest.raises(ValueError):
        questions_needed(0.0, 0.2)


def comparison(**fields) -> Comparison:
    base = dict(n=200, accuracy_a=0.5, accuracy_b=0.56, difference=0.06, ci_low=0.015, ci_high=0.105,
                p_value=0.0123, verdict="better", mde=0.08, discordant_rate=0.2)
    return Comparison(**(base | fields))


def test_verdict_sentence_for_a_finding():
    assert verdict_sentence(comparison(), "M2 (srlm/likelihood)", "sft", "arc_challenge") == (
        "M2 (srlm/likelihood) is better than sft on arc_challenge: "
        "+6.0 points [95% CI +1.5, +10.5], McNemar p = 0.012, n = 200."
    )
    worse = comparison(difference=-0.06, ci_low=-0.105, ci_high=-0.015, verdict="worse", p_value=0.0002)
    assert verdict_sentence(worse, "M2", "sft", "gsm8k") == (
        "M2 is worse than sft on gsm8k: -6.0 points [95% CI -10.5, -1.5], McNemar p < 0.001, n = 200."
    )


def test_verdict_sentence_for_no_detectable_difference_states_the_sensitivity():
    c = comparison(n=48, difference=-0.01, ci_low=-0.05, ci_high=0.03, p_value=0.69,
                   verdict="no detectable difference", mde=0.183, discordant_rate=0.2)
    assert verdict_sentence(c, "M2", "sft", "arc_challenge") == (
        "M2 shows no detectable difference from sft on arc_challenge: -1.0 points [95% CI -5.0, +3.0], "
        "McNemar p = 0.69, n = 48; at n = 48 only differences above 18.3 points are detectable with 80% power "
        f"(about {questions_needed(0.05, 0.2)} questions would detect 5 points)."
    )


def test_verdict_sentence_never_prints_negative_zero():
    c = comparison(difference=-0.0001, ci_low=-0.0004, ci_high=0.0002, verdict="no detectable difference",
                   mde=0.03, n=5000)
    assert verdict_sentence(c, "M2", "sft", "arc") == (
        "M2 shows no detectable difference from sft on arc: +0.0 points [95% CI +0.0, +0.0], McNemar p = 0.012, "
        "n = 5000; at n = 5000 only differences above 3.0 points are detectable with 80% power."
    )
