"""Every name the code dispatches on, written once: selectors, benchmarks, arm kinds, tasks, roles and the
keys of the fixed assets (docs/design.md, section 4, fixes the SQL names these become).

Adding a selector takes three things: its scorer (a function of `Measured` in srlm/selectors.py), its
selection query (sql/select_<name>.sql) and one `register_selector` line below. Code outside the package
registers its own the same way, passing the query's path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Literal

from pydantic import AfterValidator

from srlm import selectors
from srlm.selectors import Measured
from srlm.sqlfiles import sql_text

# ------------------------------------------------------------------------------------------------ arms

SFT, SELF_TRAIN, SRLM = "sft", "self_train", "srlm"
ARM_KINDS = (SFT, SELF_TRAIN, SRLM)

# ----------------------------------------------------------------------------------------- tasks, roles

ANSWER, ENRICH = "answer", "enrich"  # the two tasks of one model: x -> <think>r</think> y; (x, r, y) -> r'
CANDIDATE, PARENT = "candidate", "parent"  # a score row's rationale: a new candidate, or the one it rewrote
ROLES = (CANDIDATE, PARENT)

# ------------------------------------------------------------------------------------------ asset keys

INSTRUCTIONS = ("data", "instructions")
INSTRUCTIONS_REJECTED = ("data", "instructions_rejected")
CATALYST = ("data", "catalyst")
CATALYST_REJECTED = ("data", "catalyst_rejected")
BASE_MODEL = ("model", "base")
QUESTIONS = ("eval", "questions")
BASE_EVAL = ("eval", "base_model")
SUMMARY = ("eval", "summary")
SCALING = ("eval", "scaling")
COMPARISON = ("eval", "comparison")
BASE_SCHEMA = BASE_MODEL[0]  # the base model's stage: its evaluation is BASE_EVAL


def table_key(schema: str, name: str) -> tuple[str, str]:
    """A stage's table: `<schema>/<name>`; the base model's evaluation is eval/base_model."""
    return BASE_EVAL if (schema, name) == (BASE_SCHEMA, "eval") else (schema, name)


# ------------------------------------------------------------------------------------------- selectors

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a selector names a scores column and part of a schema


@dataclass(frozen=True)
class Selector:
    name: str
    scorer: Callable[[Measured], float]  # higher is better; -inf never wins
    sql_path: Path | None = None  # its selection query; None: the project's sql/select_<name>.sql

    def query(self) -> str:
        return self.sql_path.read_text() if self.sql_path else sql_text(f"select_{self.name}")


SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, scorer: Callable[[Measured], float], sql_path: str | Path | None = None) -> Selector:
    """Make a selector known everywhere: arms (`srlm/<name>`, `self_train/<name>`), a `scores` column,
    `selector_choices`, the report. Its query reads `candidates` and `scores` and returns select_best's
    columns (sql/select_length.sql is a template)."""
    if not _NAME.match(name):
        raise ValueError(f"selector name '{name}': lower snake case (it names a column and a schema)")
    if name in SELECTORS:
        raise ValueError(f"selector '{name}' is already registered")
    if sql_path is not None and not Path(sql_path).is_file():
        raise FileNotFoundError(f"selector '{name}': no query file {sql_path}")
    SELECTORS[name] = Selector(name, scorer, Path(sql_path) if sql_path is not None else None)
    return SELECTORS[name]


def selector_names() -> tuple[str, ...]:
    """The registered selectors, in registration order (the order of the scores columns)."""
    return tuple(SELECTORS)


def get_selector(name: str) -> Selector:
    if name not in SELECTORS:
        raise ValueError(f"unknown selector '{name}'; choose one of {', '.join(SELECTORS)}")
    return SELECTORS[name]


def check_selector(name: str) -> str:
    """The name, if registered."""
    return get_selector(name).name


# a config field naming a selector: checked against the registry when validated, so selectors registered
# after import (outside the package) are accepted too
SelectorName = Annotated[str, AfterValidator(check_selector)]


register_selector("length", selectors.length)
register_selector("likelihood", selectors.likelihood)
register_selector("consistency", selectors.consistency)

# ------------------------------------------------------------------------------------------ benchmarks


@dataclass(frozen=True)
class BenchmarkSpec:
    """A benchmark of the data kit; its reader is srlm/benchmarks.py's READERS[name]."""

    name: str
    splits: tuple[str, ...]  # the splits its reader accepts, "test" first
    multiple_choice: bool  # only multiple choice can be scored by log-likelihood
    numeric_answer: bool = False  # the generate prompt asks for a number


BENCHMARKS: dict[str, BenchmarkSpec] = {
    b.name: b
    for b in (
        BenchmarkSpec("gsm8k", ("test",), multiple_choice=False, numeric_answer=True),
        BenchmarkSpec("arc_challenge", ("test", "train", "dev"), multiple_choice=True),
        BenchmarkSpec("mmlu", ("test", "dev", "val"), multiple_choice=True),
        # "test" is the kit's validation file: HellaSwag's test labels are not public
        BenchmarkSpec("hellaswag", ("test",), multiple_choice=True),
        BenchmarkSpec("bbh", ("test",), multiple_choice=False),
    )
}
BENCHMARK_NAMES = tuple(BENCHMARKS)
BenchmarkName = Literal[BENCHMARK_NAMES]  # type: ignore[valid-type]  # the config's benchmark keys
