"""Reading instruction data (JSON / JSONL / Parquet) into examples, with every bad row accounted for.

Text files are UTF-8 (a leading byte-order mark is skipped); JSONL lines end in LF, CRLF or CR.
A malformed file stops with `DataFormatError` naming the file and line. A bad row (missing or empty
field, non-text value, duplicate, too long for the model) becomes a `Rejected` record with a reason.
Every row of the files is accounted for (`Intake`): rows in the files = blank lines + rows excluded
(with a reason) + rows the seeded sample did not draw + rows read, and rows read = kept + rejected.
`check_intake` stops an experiment (`IntakeError`) whose file kept no row or rejected too many.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import pyarrow.parquet as pq

from srlm.config import InstructionSource

CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


class DataFormatError(ValueError):
    """A file that cannot be read as its format at all; the message names the file and the line."""


@dataclass(frozen=True)
class Example:
    example_id: str
    source: str
    source_row: int  # 1-based line (JSONL) or row/element number (JSON array, Parquet)
    instruction: str
    input: str
    output: str
    rationale: str


@dataclass(frozen=True)
class Rejected:
    source: str
    source_row: int
    reason: str
    raw: str  # the row as JSON text, so nothing is lost
    example_id: str | None = None


class IntakeError(ValueError):
    """Too little of a file survived intake for the experiment to go on; the message names the file, the
    counts and the most common reasons rows were rejected."""


class RowAccountingError(RuntimeError):
    """Rows were lost or invented between the files and the kept + rejected tables (a bug, never bad input)."""


@dataclass
class Intake:
    """Where every row of the files went before validation, counted as it happens."""

    rows_in_files: int = 0  # JSONL lines (blank ones too), JSON array elements, Parquet rows
    blank_lines: int = 0  # JSONL lines holding no row
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows skipped before sampling
    not_sampled: int = 0  # eligible rows the seeded sample did not draw
    read: int = 0  # rows taken in: each one ends up kept or rejected

    def exclude(self, reason: str, n: int) -> None:
        self.excluded[reason] = self.excluded.get(reason, 0) + n

    def take(self, rows: list[tuple[int, Any]], size: int | None, seed: int) -> list[tuple[int, Any]]:
        """The seeded sample of `rows` (see sample_rows), counted."""
        drawn = sample_rows(rows, size, seed)
        self.not_sampled += len(rows) - len(drawn)
        self.read += len(drawn)
        return drawn

    def check(self, kept: int, rejected: int) -> None:
        """Raise RowAccountingError unless every row of the files adds up to kept + rejected + skipped."""
        accounted = self.blank_lines + sum(self.excluded.values()) + self.not_sampled + self.read
        if self.rows_in_files != accounted or self.read != kept + rejected:
            raise RowAccountingError(
                f"rows do not add up: {self.rows_in_files} in the files, {self.blank_lines} blank lines, "
                f"{sum(self.excluded.values())} excluded, {self.not_sampled} not sampled, {self.read} read; "
                f"{kept} kept + {rejected} rejected"
            )

    def counts(self, kept: int, rejected: Sequence[Rejected]) -> dict[str, int]:
        """The checked account, with exclusions per reason and rejections per reason (the text before the
        reason's colon)."""
        self.check(kept, len(rejected))
        out = {"rows_in_files": self.rows_in_files, "blank_lines": self.blank_lines,
               "excluded": sum(self.excluded.values()), "not_sampled": self.not_sampled,
               "read": self.read, "kept": kept, "rejected": len(rejected)}
        out.update({f"excluded: {reason}": n for reason, n in self.excluded.items()})
        for r in rejected:
            key = "rejected: " + r.reason.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out


@dataclass
class LoadResult:
    examples: list[Example] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    intake: Intake = field(default_factory=Intake)

    def counts(self) -> dict[str, int]:
        return self.intake.counts(len(self.examples), self.rejected)


def stable_id(*parts: str) -> str:
    """16 hex digits of sha256 over the parts (unit-separated): the content hash used for ids."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ file readers


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataFormatError(f"{path}: cannot tell the format from the extension '{suffix}'; set format: json | jsonl | parquet")


BLANK_LINE = object()  # what read_rows yields for a JSONL line holding only whitespace

# JSONL line breaks: LF, CRLF or CR. Not str.splitlines(), which also breaks at U+2028, U+0085 and other
# characters a JSON string may hold unescaped.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read_rows(path: str | Path, fmt: str = "auto") -> Iterator[tuple[int, Any]]:
    """Yield (row number, row) from a JSON array, JSONL or Parquet file; a blank JSONL line yields
    BLANK_LINE, so every line is accounted for. Rows are whatever the file holds: callers decide what a
    valid row is. Undecodable files raise DataFormatError with file and line."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataFormatError(f"{path}: not a readable Parquet file: {exc}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    text = _read_text(path)
    if fmt == "jsonl":
        lines = _LINE_BREAK.split(text)
        if lines[-1] == "":  # the break that ends the last line starts no line of its own
            lines.pop()
        for lineno, line in enumerate(lines, start=1):
            yield lineno, BLANK_LINE if not line.strip() else _parse_json(line, path, lineno)
        return
    if not text.strip():
        raise DataFormatError(f"{path}: line 1: the file is empty; a JSON file must hold an array of rows")
    data = _parse_json(text, path, 1, extra_data_hint="; a row per line is JSONL: name the file .jsonl or set format: jsonl")
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: line 1: a JSON file must hold an array of rows, found {type(data).__name__}")
    yield from enumerate(data, start=1)


def utf8_text(data: bytes, where: str, error: type[Exception]) -> str:
    """A file's bytes as UTF-8 text, without the byte-order mark some editors write first; an undecodable
    byte raises `error` naming its line ("<where>: line N: not UTF-8 text")."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{where}: line {line}: not UTF-8 text ({exc.reason})") from None


def _read_text(path: Path) -> str:
    return utf8_text(path.read_bytes(), str(path), DataFormatError)


def _parse_json(text: str, path: Path, first_line: int, extra_data_hint: str = "") -> Any:
    """json.loads with errors that name the file and line (`text` starts at line `first_line`); the hint
    follows the error when more JSON follows a complete value."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = first_line + exc.lineno - 1
        hint = extra_data_hint if exc.msg == "Extra data" else ""
        raise DataFormatError(f"{path}: line {line}: not valid JSON ({exc.msg}, column {exc.colno}){hint}") from None
    except RecursionError:
        depth, offset = _deepest_nesting(text)
        raise DataFormatError(
            f"{path}: line {first_line + offset}: nested too deeply to read ({depth} levels of arrays/objects)"
        ) from None


def _deepest_nesting(text: str) -> tuple[int, int]:
    """(deepest nesting of JSON arrays/objects, 0-based line where it is first reached); strings skipped."""
    depth = deepest = line = deepest_line = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, deepest_line = depth, line
        elif char in "]}":
            depth -= 1
        if char == "\n":
            line += 1
    return deepest, deepest_line


# ------------------------------------------------------------------------------------------ rows -> examples


def text_field(row: dict, column: str | None, name: str, required: bool) -> str:
    """The field's text, "" when optional and absent; raises ValueError(reason) for a bad value."""
    if column is None:
        return ""
    if column not in row or row[column] is None:
        if required:
            raise ValueError(f"missing field: '{name}' (column '{column}')")
        return ""
    value = row[column]
    if not isinstance(value, str):
        raise ValueError(f"non-text value: '{name}' (column '{column}') is {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"empty field: '{name}' (column '{column}')")
    return value.strip()


def split_answer(output: str, delimiter: str | None, strip_calc: bool) -> tuple[str, str]:
    """(rationale, answer) from an output like GSM8K's "steps #### 72"; no delimiter -> ("", output)."""
    if strip_calc:
        output = CALC_ANNOTATION.sub("", output)
    if not delimiter:
        return "", output.strip()
    if delimiter not in output:
        raise ValueError(f"missing answer delimiter: '{delimiter}' not in the output")
    steps, answer = output.rsplit(delimiter, 1)
    if not answer.strip():
        raise ValueError(f"empty field: nothing after the answer delimiter '{delimiter}'")
    return steps.strip(), answer.strip()


def row_to_example(row: Any, src: InstructionSource, source_name: str, row_no: int) -> Example:
    """One file row -> Example; raises ValueError(reason) for a bad row."""
    if not isinstance(row, dict):
        raise ValueError(f"not an object: the row is a {type(row).__name__}")
    cols = src.columns
    instruction = text_field(row, cols.instruction, "instruction", required=True)
    input_text = text_field(row, cols.input, "input", required=False)
    output = text_field(row, cols.output, "output", required=True)
    rationale = text_field(row, cols.rationale, "rationale", required=False)
    steps, output = split_answer(output, src.answer_delimiter, src.strip_calc_annotations)
    rationale = rationale or steps
    if cols.id is not None:
        raw_id = row.get(cols.id)
        if raw_id is None or isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id).strip() == "":
            raise ValueError(f"missing field: 'id' (column '{cols.id}') must be a non-empty string or integer")
        example_id = f"{source_name}:{str(raw_id).strip()}"
    else:
        example_id = stable_id(instruction, input_text, output)
    return Example(example_id, source_name, row_no, instruction, input_text, output, rationale)


def read_file_rows(path: str | Path, fmt: str, intake: Intake) -> list[tuple[int, Any]]:
    """Every row of a file (blank lines counted in `intake`, not returned)."""
    rows = []
    for row_no, row in read_rows(path, fmt):
        intake.rows_in_files += 1
        if row is BLANK_LINE:
            intake.blank_lines += 1
        else:
            rows.append((row_no, row))
    return rows


def sample_rows(rows: list, size: int | None, seed: int) -> list:
    """A seeded sample in file order (None or size >= len: all rows)."""
    if size is None or size >= len(rows):
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[i] for i in picked]


def load_instructions(
    sources: Sequence[InstructionSource],
    seed: int,
    exclude: set[tuple[str, str]] | None = None,
    exclude_reason: str = "already used",
) -> LoadResult:
    """All sources -> kept examples + rejected rows. Rows whose (instruction, input) is in `exclude` are
    skipped before sampling (counted as excluded, with `exclude_reason`). Duplicates (same example_id,
    across sources too) keep the first occurrence."""
    result = LoadResult()
    seen: dict[str, tuple[str, int]] = {}
    for index, src in enumerate(sources):
        name = source_name(src)
        rows = read_file_rows(src.path, src.format, result.intake)
        if exclude:
            eligible = [(n, row) for n, row in rows if _instruction_key(row, src) not in exclude]
            result.intake.exclude(exclude_reason, len(rows) - len(eligible))
            rows = eligible
        for row_no, row in result.intake.take(rows, src.sample, seed + index):
            raw = json.dumps(row, ensure_ascii=False, default=str)
            try:
                example = row_to_example(row, src, name, row_no)
            except ValueError as exc:
                result.rejected.append(Rejected(name, row_no, str(exc), raw))
                continue
            if example.example_id in seen:
                first_src, first_row = seen[example.example_id]
                reason = f"duplicate: same example as {first_src} row {first_row}"
                result.rejected.append(Rejected(name, row_no, reason, raw, example.example_id))
                continue
            seen[example.example_id] = (name, row_no)
            result.examples.append(example)
    return result


def source_name(src: InstructionSource) -> str:
    """What rows of `src` are labelled with (Example.source, Rejected.source): its name, else the file's stem."""
    return src.name or Path(src.path).stem


def _instruction_key(row: Any, src: InstructionSource) -> tuple[str, str] | None:
    if not isinstance(row, dict):
        return None
    instruction, input_text = row.get(src.columns.instruction), row.get(src.columns.input) if src.columns.input else ""
    if not isinstance(instruction, str) or not isinstance(input_text or "", str):
        return None
    return instruction.strip(), (input_text or "").strip()


T = TypeVar("T")


def reject_too_long(
    items: Sequence[T], n_tokens: Sequence[int], max_tokens: int, to_rejected: Callable[[T, str], Rejected]
) -> tuple[list[T], list[Rejected]]:
    """Split items by token length: those over `max_tokens` become Rejected("too long: ...")."""
    kept, rejected = [], []
    for item, n in zip(items, n_tokens, strict=True):
        if n > max_tokens:
            rejected.append(to_rejected(item, f"too long: {n} tokens, the model takes {max_tokens}"))
        else:
            kept.append(item)
    return kept, rejected


# ------------------------------------------------------------------------------------------ intake bounds


def check_intake(
    section: str, files: Mapping[str, str], kept: Iterable[str], rejected: Sequence[Rejected], max_rejected_fraction: float
) -> None:
    """Raise IntakeError unless every file kept at least one row and rejected at most `max_rejected_fraction`
    of the rows read from it (an empty file, a column mapping that matches nothing or a wrong format must not
    let an experiment run on nothing).

    `files` maps each source name (Example.source, Rejected.source, ...) to its file; several names may
    share a file (a catalyst pool and the records derived from it). `kept` holds the source name of each
    kept row. `section` is the config section whose max_rejected_fraction applies; the message names it."""
    kept_per_file = Counter(files.get(name, name) for name in kept)
    reasons_per_file: dict[str, list[str]] = {}
    for r in rejected:
        reasons_per_file.setdefault(files.get(r.source, r.source), []).append(r.reason)
    problems = []
    for file in dict.fromkeys([*files.values(), *kept_per_file, *reasons_per_file]):
        problem = _intake_problem(kept_per_file[file], reasons_per_file.get(file, []), max_rejected_fraction)
        if problem:
            problems.append(f"{file}: {problem}")
    if problems:
        raise IntakeError(
            f"{section}: too little of the data survived intake ({section}.max_rejected_fraction is "
            f"{max_rejected_fraction}):\n  " + "\n  ".join(problems)
        )


def _intake_problem(kept: int, reasons: Sequence[str], max_rejected_fraction: float) -> str | None:
    read = kept + len(reasons)
    if read == 0:
        return "no row kept: no rows read (the file is empty, holds only blank lines, or every row was skipped)"
    if kept == 0:
        return f"no row kept: all {read} rows read were rejected; most common reasons: {top_reasons(reasons)}"
    if len(reasons) > max_rejected_fraction * read:
        return (f"{len(reasons)} of {read} rows read were rejected ({len(reasons) / read:.0%}), {kept} kept; "
                f"most common reasons: {top_reasons(reasons)}")
    return None


def top_reasons(reasons: Sequence[str], n: int = 3) -> str:
    """The `n` most common kinds of reason (the text before the colon) with their counts, each with an
    example when the reasons of a kind differ: '12 x missing field: 'instruction' (column 'prompt')'."""
    kinds: dict[str, list[str]] = {}
    for reason in reasons:
        kinds.setdefault(reason.split(":")[0], []).append(reason)
    common = sorted(kinds.items(), key=lambda kv: -len(kv[1]))[:n]
    return "; ".join(
        f"{len(group)} x {group[0]}" if len(set(group)) == 1 else f"{len(group)} x {kind} (e.g. {group[0]})"
        for kind, group in common
    )
