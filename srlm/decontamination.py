"""Decontamination: training text that shares a long word n-gram (13, as GPT-3 and lm-evaluation-harness
use) with an evaluation question is flagged; training text equal to a question (after normalization)
is an exact duplicate.

Normalization: lower case, every run of non-alphanumeric characters becomes one space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

_NON_WORD = re.compile(r"[\W_]+")  # Unicode-aware: letters and digits of any script are kept


def normalize(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def ngrams(text: str, n: int) -> set[str]:
    words = normalize(text).split()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Contamination:
    text_id: str
    question_id: str
    kind: str  # "exact" | "ngram"
    evidence: str  # the shared n-gram, or the normalized text


class QuestionIndex:
    """All evaluation questions' n-grams and normalized texts, for fast lookups."""

    def __init__(self, questions: Iterable[tuple[str, str]], n: int):
        self.n = n
        self.by_ngram: dict[str, str] = {}
        self.by_text: dict[str, str] = {}
        for question_id, text in questions:
            self.by_text.setdefault(normalize(text), question_id)
            for gram in ngrams(text, n):
                self.by_ngram.setdefault(gram, question_id)

    def check(self, texts: Sequence[tuple[str, str]]) -> list[Contamination]:
        """(text_id, text) pairs -> one finding per contaminated text (exact beats n-gram)."""
        found = []
        for text_id, text in texts:
            norm = normalize(text)
            if norm and norm in self.by_text:
                found.append(Contamination(text_id, self.by_text[norm], "exact", norm[:200]))
                continue
            for gram in sorted(ngrams(text, self.n)):
                if gram in self.by_ngram:
                    found.append(Contamination(text_id, self.by_ngram[gram], "ngram", gram))
                    break
        return found
