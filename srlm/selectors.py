"""The answer-format-agnostic selectors (docs/design.md, "The method"), as pure functions.

Each scorer gives a rationale (a candidate, or the parent it rewrote) a score from what scoring measured of
it (`Measured`), higher is better; SQL (sql/select_<name>.sql) then keeps the best candidate per example.
srlm/registry.py names them. None of them parses answers.

- length:      tokens of the rationale; degenerate text scores -inf: empty, cut off by the token
               limit (no end), or more than `max_repeated_fraction` of its word n-grams are repeats.
- likelihood:  mean log p(y | x, r) - mean log p(y | x): how much the rationale makes the reference
               response more likely under the model that wrote it (the second term once per example).
- consistency: mean similarity to the other candidates of the same example (the medoid scores highest),
               a free-text self-consistency. Similarity = Jaccard index of the sets of lower-cased word
               unigrams and bigrams; one candidate alone scores 0 (no agreement to measure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

NEG_INF = float("-inf")
_WORD = re.compile(r"\w+", re.UNICODE)


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the word n-grams that repeat an earlier one (0 for texts shorter than n words)."""
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def degeneration(text: str, finish_reason: str, ngram: int, max_repeated_fraction: float) -> str | None:
    """Why a rationale is degenerate, or None when it is fine."""
    if not text.strip():
        return "empty"
    if finish_reason == "length":
        return "no end (cut off at the token limit)"
    fraction = repeated_ngram_fraction(text, ngram)
    if fraction > max_repeated_fraction:
        return f"repetition ({fraction:.0%} of {ngram}-grams repeat)"
    return None


def length_score(n_tokens: int, degenerate: str | None) -> float:
    """The length selector: the rationale's tokens, -inf when `degeneration` found it degenerate."""
    return NEG_INF if degenerate else float(n_tokens)


def likelihood_gain(mean_logp_with_rationale: float, mean_logp_without: float) -> float:
    return mean_logp_with_rationale - mean_logp_without


@lru_cache(maxsize=4096)  # a candidate is compared with each of its siblings
def _features(text: str) -> frozenset[str]:
    words = _WORD.findall(text.lower())
    return frozenset(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def _jaccard(fa: frozenset[str], fb: frozenset[str]) -> float:
    union = fa | fb
    return len(fa & fb) / len(union) if union else 1.0


def similarity(a: str, b: str) -> float:
    return _jaccard(_features(a), _features(b))


def consistency_to(text: str, others: Sequence[str]) -> float:
    """Mean similarity of one text to a set of others (0 without any: no agreement to measure)."""
    return sum(similarity(text, o) for o in others) / len(others) if others else 0.0


# ------------------------------------------------------------------------------------------------ scorers


@dataclass(frozen=True)
class Measured:
    """What a scorer sees of one rationale: its text, what scoring measured with the writer's model, and
    the texts of its example's candidates."""

    text: str
    role: str  # candidate | parent
    n_tokens: int
    degenerate: str | None  # `degeneration`'s reason, None when fine (an empty parent is fine)
    logp_with_rationale: float  # mean log p(y | x, r)
    logp_without: float  # mean log p(y | x)
    siblings: tuple[str, ...]  # the example's candidate texts, in sample order
    index: int | None  # this candidate's place among them; None for the parent

    @property
    def others(self) -> list[str]:
        """The example's candidates other than this one (all of them for the parent)."""
        return [t for i, t in enumerate(self.siblings) if i != self.index]


def length(m: Measured) -> float:
    return length_score(m.n_tokens, m.degenerate)


def likelihood(m: Measured) -> float:
    return likelihood_gain(m.logp_with_rationale, m.logp_without)


def consistency(m: Measured) -> float:
    return consistency_to(m.text, m.others)
