"""The reasoning catalyst C = {(x, r0, y, r*)}: demonstrations of turning a short rationale into an
enriched one, from three sources (docs/design.md, "The method").

- derived: rows that pair a short answer with a worked solution (GSM8K train): r0 = the bare final
  answer, r* = the worked solution, one step per line, each marked with a skill by its place (see
  `steps_as_rationale`; no text is invented).
- file:    a user's catalyst file (columns mapped in the config).
- teacher: a teacher model writes r* from (x, r0, y) with the eight-skill prompt (srlm.prompts).

Every source yields CatalystRecords plus Rejected rows with reasons; r* must be longer than r0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Sequence

from srlm.config import Catalyst, FileCatalyst
from srlm.datasets import Example, Intake, Rejected, read_file_rows, source_name, stable_id, text_field
from srlm.prompts import skills_used, strip_think


@dataclass(frozen=True)
class CatalystRecord:
    catalyst_id: str
    source: str
    source_row: int
    instruction: str
    input: str
    short_rationale: str  # r0
    output: str  # y
    rationale: str  # r*
    skills: str  # comma-separated skills marked in r*, in order of first use


@dataclass
class CatalystResult:
    records: list[CatalystRecord]
    rejected: list[Rejected]
    intake: Intake  # the rows of the catalyst file, or of the pool (with the rows skipped as already in D0)

    def counts(self) -> dict[str, int]:
        return self.intake.counts(len(self.records), self.rejected)


def steps_as_rationale(steps: str) -> str:
    """A worked solution in the enriching format: one step per non-empty line, each marked with a skill by its
    place, and no word added: the first of several steps opens the decomposition of the problem
    ([decomposition]), the steps between work out one quantity each ([detail]), the last reaches the answer
    ([summary]); a one-line solution is a single [detail]."""
    lines = [line.strip() for line in steps.splitlines() if line.strip()]
    if len(lines) == 1:
        return f"[detail] {lines[0]}"
    skills = ["decomposition"] + ["detail"] * (len(lines) - 2) + ["summary"]
    return "\n".join(f"[{skill}] {line}" for skill, line in zip(skills, lines))


def _record(ex: Example, source: str, short: str, enriched: str) -> CatalystRecord:
    cid = stable_id("catalyst", ex.instruction, ex.input, short, ex.output, enriched)
    return CatalystRecord(cid, source, ex.source_row, ex.instruction, ex.input, short, ex.output, enriched, skills_used(enriched))


def _check_longer(record: CatalystRecord) -> str | None:
    if len(record.rationale) <= len(record.short_rationale):
        return "not enriched: r* is not longer than r0"
    return None


def derive(examples: Sequence[Example], source: str = "derived") -> tuple[list[CatalystRecord], list[Rejected]]:
    records, rejected = [], []
    for ex in examples:
        raw = json.dumps(ex.__dict__, ensure_ascii=False)
        if not ex.rationale:
            rejected.append(Rejected(source, ex.source_row, "no worked solution: the row has no rationale to derive r* from", raw))
            continue
        record = _record(ex, source, ex.output, steps_as_rationale(ex.rationale))
        problem = _check_longer(record)
        if problem:
            rejected.append(Rejected(source, ex.source_row, problem, raw))
        else:
            records.append(record)
    return records, rejected


def teach(
    examples: Sequence[Example],
    generate: Callable[[list[Example]], list[tuple[str, str]]],
    source: str = "teacher",
) -> tuple[list[CatalystRecord], list[Rejected]]:
    """`generate(examples)` returns (text, finish_reason) per example from the teacher model."""
    records, rejected = [], []
    for ex, (text, finish) in zip(examples, generate(list(examples)), strict=True):
        raw = json.dumps({**ex.__dict__, "teacher_output": text}, ensure_ascii=False)
        if finish != "stop":
            rejected.append(Rejected(source, ex.source_row, f"teacher output cut off: finish_reason {finish}", raw))
            continue
        record = _record(ex, source, ex.rationale or ex.output, strip_think(text))
        problem = "empty field: the teacher wrote nothing" if not record.rationale else _check_longer(record)
        if problem:
            rejected.append(Rejected(source, ex.source_row, problem, raw))
        else:
            records.append(record)
    return records, rejected


def catalyst_files(spec: Catalyst) -> dict[str, str]:
    """The file behind each source name a catalyst's records and rejected rows carry."""
    if spec.source == "file":
        return {"file": spec.file.path}
    return {source_name(spec.pool): spec.pool.path, spec.source: spec.pool.path}


def read_catalyst_file(spec: FileCatalyst, size: int, seed: int) -> CatalystResult:
    """A user's catalyst file -> records; `size` rows are drawn (seeded) when the file holds more."""
    source = "file"
    cols = spec.columns
    intake = Intake()
    rows = intake.take(read_file_rows(spec.path, spec.format, intake), size, seed)
    records, rejected, seen = [], [], set()
    for row_no, row in rows:
        raw = json.dumps(row, ensure_ascii=False, default=str)
        try:
            if not isinstance(row, dict):
                raise ValueError(f"not an object: the row is a {type(row).__name__}")
            ex = Example(
                example_id="",
                source=source,
                source_row=row_no,
                instruction=text_field(row, cols.instruction, "instruction", required=True),
                input=text_field(row, cols.input, "input", required=False),
                output=text_field(row, cols.output, "output", required=True),
                rationale=text_field(row, cols.rationale, "rationale", required=True),
            )
            short = text_field(row, cols.short_rationale, "short_rationale", required=False)
        except ValueError as exc:
            rejected.append(Rejected(source, row_no, str(exc), raw))
            continue
        record = _record(ex, source, short, ex.rationale)
        if cols.id is not None and row.get(cols.id) is not None:
            record = CatalystRecord(**{**record.__dict__, "catalyst_id": f"{source}:{row[cols.id]}"})
        problem = _check_longer(record)
        if record.catalyst_id in seen:
            problem = "duplicate: same catalyst example appears earlier in the file"
        if problem:
            rejected.append(Rejected(source, row_no, problem, raw))
            continue
        seen.add(record.catalyst_id)
        records.append(record)
    return CatalystResult(records, rejected, intake)
