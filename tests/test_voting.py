"""Majority vote and accuracy against the number of samples."""

from __future__ import annotations

import pytest

from srlm.benchmarks import Question
from srlm.voting import majority_vote, scaling_accuracy


def mc(question_id: str, answer: str) -> Question:
    labels = ("A", "B", "C", "D")
    return Question("mmlu", question_id, "astronomy", "?", ("w", "x", "y", "z"), labels, answer, labels.index(answer))


GOLD = {"q1": mc("q1", "A"), "q2": mc("q2", "B"), "q3": Question("gsm8k", "q3", "", "?", (), (), "1200", None)}


def test_majority_vote():
    assert majority_vote(["B", "A", "B"]) == "B"
    assert majority_vote(["A", "B", "B", "A"]) == "A"  # tie: the first to appear
    assert majority_vote(["B", "A", "A", "B", "C"]) == "B"
    assert majority_vote([None, None, "C", None, "D"]) == "C"  # None never votes, even as the most common
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_scaling_accuracy_votes_over_prefixes():
    samples = {
        "q1": ["C", "A", "A", "C"],  # n=1: C wrong; n=2: C first in a tie, wrong; n=4: tie C/A -> C, wrong
        "q2": [None, "B", "A", "B"],  # n=1: None wrong; n=2: B right; n=4: B right
        "q3": ["1200", "7", "1200", "7"],  # n=1 right; n=2 tie -> "1200" right; n=4 right
    }
    assert scaling_accuracy(samples, GOLD, [1, 2, 4]) == {1: 1 / 3, 2: 2 / 3, 4: 2 / 3}
    assert scaling_accuracy({"q1": ["C", "A", "A", "C"]}, GOLD, [3]) == {3: 1.0}  # first 3 only


def test_scaling_accuracy_uses_only_the_first_n_samples():
    samples = {"q2": ["B", "A", "A", "A"]}
    assert scaling_accuracy(samples, GOLD, [1, 4]) == {1: 1.0, 4: 0.0}


def test_scaling_accuracy_errors():
    with pytest.raises(ValueError, match="q1 has 2 samples; the largest N needs 4"):
        scaling_accuracy({"q1": ["A", "A"], "q2": ["B"] * 4}, GOLD, [1, 4])
    with pytest.raises(ValueError, match="no gold question for 'q9'"):
        scaling_accuracy({"q9": ["A"]}, GOLD, [1])
    with pytest.raises(ValueError, match="positive"):
        scaling_accuracy({"q1": ["A"]}, GOLD, [0, 1])
    with pytest.raises(ValueError, match="positive"):
        scaling_accuracy({"q1": ["A"]}, GOLD, [])
    with pytest.raises(ValueError, match="no questions"):
        scaling_accuracy({}, GOLD, [1])
