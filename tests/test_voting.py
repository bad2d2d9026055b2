"""Majority vote, and the checks on the sample counts N."""

from __future__ import annotations

import pytest

from srlm.voting import check_sample_counts, majority_vote


def test_majority_vote():
    assert majority_vote(["B", "A", "B"]) == "B"
    assert majority_vote(["A", "B", "B", "A"]) == "A"  # tie: the first to appear
    assert majority_vote(["B", "A", "A", "B", "C"]) == "B"
    assert majority_vote([None, None, "C", None, "D"]) == "C"  # None never votes, even as the most common
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_sample_counts_are_sorted_when_distinct_and_positive():
    assert check_sample_counts([16, 1, 4], "samples") == (1, 4, 16)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([0, -3], r"samples must be positive integers, got \[0, -3\] in \[0, -3\]"),
        ([1, 0, 4], r"samples must be positive integers, got \[0\]"),
        ([1, 4, 4, 1], r"samples must be distinct, got \[1, 4\] repeated"),
        ([], "samples needs at least one sample count"),
    ],
)
def test_bad_sample_counts_are_refused_naming_the_knob(samples, message):
    with pytest.raises(ValueError, match=message):
        check_sample_counts(samples, "samples")
