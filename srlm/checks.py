"""The rules the asset checks apply (assets/checks.py wires them), as pure functions of tables.

- schema: every table has its contract's columns and types (srlm/schemas.py), and no null key.
- nothing lost: counts add up; every selected row points at a candidate of its example; every candidate has
  its scores; every sampled question has its evaluation rows, one per N.
- decontamination: training text sharing an n-gram with an evaluation question is flagged; text equal to
  a question blocks.
- trends (warnings): selected rationales should grow longer than their parents; accuracy should not fall
  against the previous checkpoint.

Each rule returns its problems (empty: passed), in words a researcher can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import polars as pl

from srlm.arms import Arm, evaluated, stages
from srlm.decontamination import QuestionIndex
from srlm.evaluation import accuracy_at_smallest_n
from srlm.registry import CANDIDATE, PARENT
from srlm.schemas import EVAL_TABLE, EVAL_TABLES, FIXED_TABLES, Table, stage_tables

ACCURACY_DROP_WARNING = 0.05  # a fall larger than this on a benchmark (absolute) is worth a look


def table_contracts(arms: list[Arm], iterations: int, evaluates: bool) -> dict[tuple[str, str], Table]:
    """Every table asset of an experiment -> its contract."""
    contracts = dict(FIXED_TABLES)
    for stage in stages(arms, iterations):
        contracts.update({table.key(stage): table for table in stage_tables(stage)})
    if evaluates:
        contracts.update(EVAL_TABLES)
        contracts.update({EVAL_TABLE.key(stage): EVAL_TABLE for stage in evaluated(arms, iterations)})
    return contracts


def schema_problems(df: pl.DataFrame, schema: dict, keys: Sequence[str]) -> list[str]:
    problems = []
    for column, dtype in schema.items():
        if column not in df.columns:
            problems.append(f"missing column {column}")
        elif df.schema[column] != dtype:
            problems.append(f"{column} is {df.schema[column]}, expected {dtype}")
    for column in keys:
        if column in df.columns and (nulls := df[column].null_count()):
            problems.append(f"{nulls} null {column}")
    return problems


# ------------------------------------------------------------------------------------------ nothing lost


def not_recorded(name: str) -> str:
    return f"the asset's latest materialization records no '{name}' metadata, so its rows cannot be accounted for"


def rows_accounted_problems(read: int | None, kept: int, rejected: int) -> list[str]:
    """Rows the asset read (its 'read' metadata; None when not recorded) = rows kept + rows rejected."""
    if read is None:
        return [not_recorded("read")]
    return [f"read {read} != kept {kept} + rejected {rejected}"] if read != kept + rejected else []


def selected_problems(selected: pl.DataFrame, candidates: pl.DataFrame) -> list[str]:
    joined = selected.join(candidates.select("candidate_id", pl.col("example_id").alias("c_example")), on="candidate_id", how="left")
    problems = []
    if missing := joined.filter(pl.col("c_example").is_null()).height:
        problems.append(f"{missing} selected rows point at no candidate")
    if mismatched := joined.filter(pl.col("c_example").is_not_null() & (pl.col("c_example") != pl.col("example_id"))).height:
        problems.append(f"{mismatched} selected rows point at another example's candidate")
    if (dupes := selected.height - selected["example_id"].n_unique()) > 0:
        problems.append(f"{dupes} examples selected twice")
    return problems


def scores_problems(scores: pl.DataFrame, candidates: pl.DataFrame) -> list[str]:
    scored = scores.filter(pl.col("role") == CANDIDATE)
    problems = []
    if candidates.height != scored.height or set(candidates["candidate_id"]) != set(scored["candidate_id"]):
        problems.append(f"{candidates.height} candidates but {scored.height} candidate score rows")
    parents = set(scores.filter(pl.col("role") == PARENT)["example_id"])
    if missing := set(candidates["example_id"]) - parents:
        problems.append(f"{len(missing)} expanded examples have no parent score")
    return problems


def candidates_problems(candidates: pl.DataFrame, examples: int | None) -> list[str]:
    """examples: how many examples the asset expanded (its 'examples' metadata; None when not recorded)."""
    if examples is None:
        return [not_recorded("examples")]
    per_example = candidates.group_by("example_id").len()
    problems = []
    if per_example.height != examples:
        problems.append(f"{examples} examples expanded but {per_example.height} have candidates")
    if per_example.height and per_example["len"].n_unique() != 1:
        problems.append("examples have different numbers of candidates")
    return problems


def same_examples_problems(current: pl.DataFrame, previous: pl.DataFrame) -> list[str]:
    """A training set keeps every (task, example) of the previous one, and adds none."""
    a, b = set(zip(current["task"], current["example_id"])), set(zip(previous["task"], previous["example_id"]))
    return [f"{len(b - a)} examples lost, {len(a - b)} appeared"] if a != b else []


def expected_samples(protocols: dict[str, str], samples: Sequence[int]) -> dict[str, set[int]]:
    """The N each benchmark is evaluated at: every N for generate, only 1 for loglikelihood (deterministic)."""
    return {name: set(samples) if protocol == "generate" else {1} for name, protocol in protocols.items()}


def eval_completeness_problems(evals: pl.DataFrame, questions: pl.DataFrame, expected: dict[str, set[int]]) -> list[str]:
    """Every sampled question of every benchmark in `expected` has exactly one row per expected N, and no
    row answers anything else."""
    ns = pl.DataFrame(
        [(b, n) for b, values in expected.items() for n in values], schema={"benchmark": pl.String, "n_samples": pl.Int64}, orient="row"
    )
    sampled = questions.filter(pl.col("sampled") & pl.col("benchmark").is_in(list(expected))).select("benchmark", "question_id")
    wanted = sampled.join(ns, on="benchmark")
    have = evals.select("benchmark", "question_id", "n_samples")
    on = ["benchmark", "question_id", "n_samples"]
    gaps = (
        wanted.join(have, on=on, how="anti")
        .group_by("benchmark")
        .agg(pl.col("question_id").n_unique().alias("questions"), pl.col("n_samples").unique().sort().alias("ns"))
        .sort("benchmark")
    )
    asked = dict(sampled.group_by("benchmark").len().iter_rows())
    problems = [
        f"{r['benchmark']}: {r['questions']} of {asked[r['benchmark']]} sampled questions lack rows (N = {r['ns']})"
        for r in gaps.iter_rows(named=True)
    ]
    if unexpected := have.join(wanted, on=on, how="anti").height:
        problems.append(f"{unexpected} rows answer a question or N that was not asked for")
    if duplicates := have.height - have.unique().height:
        problems.append(f"{duplicates} duplicate (question, N) rows")
    return problems


# ------------------------------------------------------------------------------------------ trends


def rationale_growth(selected: pl.DataFrame, scores: pl.DataFrame) -> tuple[list[str], float, float]:
    """Mean tokens of the selected rationales vs of the parents they enriched."""
    chosen = scores.filter(pl.col("role") == CANDIDATE).join(selected.select("candidate_id"), on="candidate_id")
    parents = scores.filter(pl.col("role") == PARENT).join(selected.select("example_id"), on="example_id")
    new, old = float(chosen["n_tokens"].mean() or 0.0), float(parents["n_tokens"].mean() or 0.0)
    problems = [] if new > old or chosen.height == 0 else [f"selected rationales average {new:.1f} tokens, their parents {old:.1f}"]
    return problems, new, old


def accuracy_drops(current: pl.DataFrame, previous: pl.DataFrame, tolerance: float = ACCURACY_DROP_WARNING) -> list[str]:
    now, before = (accuracy_at_smallest_n(df.iter_rows(named=True)) for df in (current, previous))
    return [
        f"{b}: {before[b]:.3f} -> {now[b]:.3f}"
        for b in sorted(now)
        if b in before and now[b] < before[b] - tolerance
    ]


# ------------------------------------------------------------------------------------------ decontamination


def instruction_texts(instructions: pl.DataFrame) -> list[tuple[str, str]]:
    """What D0 trains on: each example's instruction (with its input) and its reference output."""
    rows = list(instructions.iter_rows(named=True))
    return [(r["example_id"], f"{r['instruction']} {r['input']}") for r in rows] + [(f"{r['example_id']}/output", r["output"]) for r in rows]


def catalyst_texts(catalyst: pl.DataFrame) -> list[tuple[str, str]]:
    """What the catalyst trains on: each instruction (with its input) and its enriched rationale."""
    rows = list(catalyst.iter_rows(named=True))
    return [(r["catalyst_id"], f"{r['instruction']} {r['input']}") for r in rows] + [(f"{r['catalyst_id']}/rationale", r["rationale"]) for r in rows]


def selected_texts(selected: pl.DataFrame, candidates: pl.DataFrame) -> list[tuple[str, str]]:
    """The selected rationales, which the next checkpoint trains on."""
    df = selected.join(candidates.select("candidate_id", "text"), on="candidate_id")
    return list(zip(df["candidate_id"], df["text"]))


@dataclass(frozen=True)
class ContaminationReport:
    passed: bool
    blocking: bool  # some text equals an evaluation question
    description: str | None
    metadata: dict


def contamination_report(texts: list[tuple[str, str]], index: QuestionIndex) -> ContaminationReport:
    """Texts sharing an n-gram with an evaluation question (a warning), or equal to one (blocking)."""
    found = index.check(texts)
    exact = [f for f in found if f.kind == "exact"]
    examples = [f"{f.text_id} ~ {f.question_id} ({f.kind}: '{f.evidence[:80]}')" for f in (exact or found)[:5]]
    description = (f"{len(exact)} exact duplicates of evaluation questions; " if exact else "") + (
        f"{len(found)} texts share a {index.n}-gram with an evaluation question" if found else ""
    )
    metadata = {"texts": len(texts), "exact_duplicates": len(exact), "ngram_overlaps": len(found) - len(exact), "examples": examples}
    return ContaminationReport(not found, bool(exact), description or None, metadata)
