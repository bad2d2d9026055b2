"""The built-in selectors on hand-built cases (docs/design.md, "The method")."""

import math

from srlm import selectors

GOOD = "First split the task into parts. Then add the parts and check the sum against the total."
LOOPING = " ".join(["add the parts and"] * 30)


def consistency_of(texts: list[str]) -> list[float]:
    """The consistency scorer of each text among the others, as scoring measures them."""
    return [selectors.consistency(selectors.Measured(t, "candidate", 1, None, 0.0, 0.0, tuple(texts), i)) for i, t in enumerate(texts)]


def length(text: str, n_tokens: int, finish_reason: str = "stop") -> float:
    """The length score as scoring computes it: degeneration check, then the score."""
    return selectors.length_score(n_tokens, selectors.degeneration(text, finish_reason, 4, 0.3))


def test_long_but_degenerate_candidate_loses_on_length():
    assert length(LOOPING, n_tokens=120) == -math.inf
    assert length(GOOD, n_tokens=20) == 20.0


def test_cut_off_candidate_is_degenerate():
    assert selectors.degeneration(GOOD, "length", 4, 0.3) == "no end (cut off at the token limit)"
    assert length(GOOD, 20, "length") == -math.inf


def test_empty_candidate_is_degenerate():
    assert selectors.degeneration("  ", "stop", 4, 0.3) == "empty"


def test_repetition_guard_threshold():
    assert selectors.repeated_ngram_fraction("a b c d e f", 4) == 0.0
    assert selectors.repeated_ngram_fraction(LOOPING, 4) > 0.9
    assert selectors.degeneration(LOOPING, "stop", 4, 0.3).startswith("repetition")


def test_rationale_that_makes_y_more_likely_wins_on_likelihood():
    baseline = -3.0
    helpful, unhelpful = selectors.likelihood_gain(-1.2, baseline), selectors.likelihood_gain(-3.4, baseline)
    assert helpful > 0 > unhelpful


def test_the_medoid_wins_on_consistency():
    texts = [
        "the total is five plus three which is eight apples",
        "the total is five plus three so eight apples",   # the medoid: close to both others
        "five plus three equals eight so the total is eight",
        "bananas are yellow",
    ]
    scores = consistency_of(texts)
    assert max(range(len(texts)), key=scores.__getitem__) == 1
    assert scores[3] == min(scores)


def test_consistency_of_one_candidate_is_zero():
    assert consistency_of(["alone"]) == [0.0]


def test_similarity_bounds():
    assert selectors.similarity("a b c", "a b c") == 1.0
    assert selectors.similarity("a b", "c d") == 0.0
    assert selectors.similarity("", "") == 1.0


def test_parent_consistency_is_mean_similarity_to_candidates():
    assert selectors.consistency_to("a b", ["a b", "c d"]) == 0.5
    assert selectors.consistency_to("a b", []) == 0.0
