"""The bad-input corpus: crafted instruction, catalyst and benchmark files and experiment configs.

Every input ends either in a clear error that names the file and the line or key, or loads with every
row accounted for (rows in the files = blank + excluded + not sampled + read; read = kept + rejected),
and then the intake bound (`check_intake`, max_rejected_fraction 0.5, the default) says whether an
experiment may go on with what was kept. Fixtures: tests/fixtures/bad_input, bad_eval, bad_config.
"""

import json
from pathlib import Path

import polars as pl
import pytest

from srlm.benchmarks import BenchmarkFormatError, read_benchmark
from srlm.catalyst import read_catalyst_file
from srlm.config import CatalystColumns, ConfigError, FileCatalyst, InstructionSource, SourceColumns, load_config
from srlm.datasets import DataFormatError, IntakeError, check_intake, load_instructions, source_name

FIXTURES = Path(__file__).parent / "fixtures"
BAD, BAD_EVAL, BAD_CONFIG = FIXTURES / "bad_input", FIXTURES / "bad_eval", FIXTURES / "bad_config"
BOUND = 0.5  # the default max_rejected_fraction
GSM = {"columns": SourceColumns(instruction="question", output="answer"), "answer_delimiter": "####"}


def source(file: str, **options) -> InstructionSource:
    return InstructionSource(path=str(BAD / file), **options)


def assert_accounted(counts: dict, rows: int, blank: int, read: int, kept: int, rejected: int) -> None:
    """The account of one file (nothing excluded or left unsampled here), and that it adds up."""
    got = [counts[k] for k in ("rows_in_files", "blank_lines", "excluded", "not_sampled", "read", "kept", "rejected")]
    assert got == [rows, blank, 0, 0, read, kept, rejected]
    assert counts["rows_in_files"] == counts["blank_lines"] + counts["excluded"] + counts["not_sampled"] + counts["read"]
    assert counts["read"] == counts["kept"] + counts["rejected"]


def assert_intake(section: str, file: Path, kept_sources: list[str], rejected: list, source: str, problem: str | None) -> None:
    """check_intake passes (problem None) or stops naming the file and the problem."""
    def check():
        check_intake(section, {source: str(file)}, kept_sources, rejected, BOUND)

    if problem is None:
        check()
        return
    with pytest.raises(IntakeError) as info:
        check()
    assert f"{section}.max_rejected_fraction is {BOUND}" in str(info.value)
    assert f"{file}: {problem}" in str(info.value)


# ------------------------------------------------------------------------------ instruction files: errors

UNREADABLE = [
    ("nul_byte.jsonl", {}, r"nul_byte\.jsonl: line 2: not valid JSON \(Invalid control character"),
    ("invalid_utf8_middle.jsonl", {}, r"invalid_utf8_middle\.jsonl: line 3: not UTF-8 text \(invalid start byte\)"),
    ("truncated.jsonl", {}, r"truncated\.jsonl: line 3: not valid JSON \(Unterminated string"),
    ("json_object.json", {}, r"json_object\.json: line 1: a JSON file must hold an array of rows, found dict"),
    ("jsonl_named_json.json", {}, r"jsonl_named_json\.json: line 2: not valid JSON \(Extra data, column 1\); a row per line is JSONL"),
    ("deep_nesting.jsonl", {}, r"deep_nesting\.jsonl: line 2: nested too deeply to read \(5001 levels"),
    ("deep_nesting.json", {}, r"deep_nesting\.json: line 3: nested too deeply to read \(5001 levels"),
    ("empty.json", {}, r"empty\.json: line 1: the file is empty; a JSON file must hold an array of rows"),
    ("zero_byte.parquet", {}, r"zero_byte\.parquet: not a readable Parquet file: .*size is 0 bytes"),
    ("bom.json", {"format": "parquet"}, r"bom\.json: not a readable Parquet file"),
    ("rows.csv", {}, r"rows\.csv: cannot tell the format from the extension '\.csv'; set format"),
]


@pytest.mark.parametrize("file, options, message", UNREADABLE, ids=[c[0] + ("[as parquet]" if c[1] else "") for c in UNREADABLE])
def test_an_unreadable_instruction_file_names_the_file_and_line(file, options, message):
    with pytest.raises(DataFormatError, match=message):
        load_instructions([source(file, **options)], seed=0)


# ------------------------------------------------------------------------------ instruction files: loaded

NOT_AN_OBJECT = "not an object: the row is a"
# file, options, (rows in file, blank, read, kept, rejected), kept (row, instruction), rejected {row: reason}, intake problem
LOADED = [
    ("bom.jsonl", {}, (2, 0, 2, 2, 0), [(1, "Name a fruit."), (2, "Name a tree.")], {}, None),
    ("bom.json", {}, (2, 0, 2, 2, 0), [(1, "Name a fruit."), (2, "Name a tree.")], {}, None),
    ("crlf.jsonl", {}, (3, 1, 2, 2, 0), [(1, "Name a fruit."), (3, "Name a tree.")], {}, None),
    ("cr_only.jsonl", {}, (2, 0, 2, 2, 0), [(1, "Name a fruit."), (2, "Name a tree.")], {}, None),
    ("unicode_separators.jsonl", {}, (2, 0, 2, 2, 0), [(1, "Join the lines:\u2028first\u0085second"), (2, "Name a fruit.")], {}, None),
    ("array_of_arrays.json", {}, (2, 0, 2, 0, 2), [], {1: f"{NOT_AN_OBJECT} list", 2: f"{NOT_AN_OBJECT} list"},
     f"no row kept: all 2 rows read were rejected; most common reasons: 2 x {NOT_AN_OBJECT} list"),
    ("non_object_rows.jsonl", {}, (5, 0, 5, 1, 4), [(5, "Name a bird.")],
     {1: f"{NOT_AN_OBJECT} str", 2: f"{NOT_AN_OBJECT} int", 3: f"{NOT_AN_OBJECT} NoneType", 4: f"{NOT_AN_OBJECT} list"},
     f"4 of 5 rows read were rejected (80%), 1 kept; most common reasons: 4 x not an object (e.g. {NOT_AN_OBJECT} str)"),
    ("numbers.jsonl", {}, (4, 0, 4, 1, 3), [(3, "Name a fruit.")],
     {1: "non-text value: 'output' (column 'output') is int", 2: "non-text value: 'instruction' (column 'instruction') is int",
      4: "non-text value: 'output' (column 'output') is float"},
     "3 of 4 rows read were rejected (75%), 1 kept; most common reasons: 3 x non-text value (e.g. non-text value: 'output'"),
    ("nulls.jsonl", {}, (4, 0, 4, 2, 2), [(2, "Name a fruit."), (4, "Name a bird.")],
     {1: "missing field: 'instruction' (column 'instruction')", 3: "missing field: 'output' (column 'output')"}, None),
    ("whitespace.jsonl", {}, (4, 0, 4, 1, 3), [(4, "Name a tree.")],
     {1: "empty field: 'instruction' (column 'instruction')", 2: "empty field: 'output' (column 'output')",
      3: "empty field: 'instruction' (column 'instruction')"},
     "3 of 4 rows read were rejected (75%), 1 kept; most common reasons: 3 x empty field (e.g. empty field: 'instruction'"),
    ("duplicates.jsonl", {}, (3, 0, 3, 2, 1), [(1, "Name a fruit."), (3, "Name a fruit.")],
     {2: "duplicate: same example as duplicates row 1"}, None),
    ("duplicate_ids.jsonl", {"columns": SourceColumns(id="id")}, (5, 0, 5, 2, 3), [(1, "Name a fruit."), (5, "Name a lake.")],
     {2: "duplicate: same example as duplicate_ids row 1",
      3: "missing field: 'id' (column 'id') must be a non-empty string or integer",
      4: "missing field: 'id' (column 'id') must be a non-empty string or integer"},
     "3 of 5 rows read were rejected (60%), 2 kept; most common reasons: 2 x missing field: 'id' (column 'id') must be a "
     "non-empty string or integer; 1 x duplicate: same example as duplicate_ids row 1"),
    ("nested_value.jsonl", {}, (2, 0, 2, 1, 1), [(2, "Name a fruit.")], {1: "non-text value: 'output' (column 'output') is dict"}, None),
    ("empty.jsonl", {}, (0, 0, 0, 0, 0), [], {}, "no row kept: no rows read (the file is empty"),
    ("blank_lines.jsonl", {}, (3, 3, 0, 0, 0), [], {}, "no row kept: no rows read (the file is empty, holds only blank lines"),
    ("prompt_response.jsonl", {}, (2, 0, 2, 0, 2), [],
     {1: "missing field: 'instruction' (column 'instruction')", 2: "missing field: 'instruction' (column 'instruction')"},
     "no row kept: all 2 rows read were rejected; most common reasons: 2 x missing field: 'instruction' (column 'instruction')"),
    ("prompt_response.jsonl", {"columns": SourceColumns(instruction="prompt", output="answer")}, (2, 0, 2, 0, 2), [],
     {1: "missing field: 'output' (column 'answer')", 2: "missing field: 'output' (column 'answer')"},
     "no row kept: all 2 rows read were rejected; most common reasons: 2 x missing field: 'output' (column 'answer')"),
    ("gsm_empty_answer.jsonl", GSM, (2, 0, 2, 1, 1), [(2, "What is 3+3?")],
     {1: "empty field: nothing after the answer delimiter '####'"}, None),
    ("wrong_types.parquet", {}, (2, 0, 2, 0, 2), [],
     {1: "non-text value: 'instruction' (column 'instruction') is int", 2: "non-text value: 'instruction' (column 'instruction') is int"},
     "no row kept: all 2 rows read were rejected; most common reasons: 2 x non-text value: 'instruction' (column 'instruction') is int"),
    ("binary_strings.parquet", {}, (2, 0, 2, 0, 2), [],
     {1: "non-text value: 'output' (column 'output') is bytes", 2: "non-text value: 'output' (column 'output') is bytes"},
     "no row kept: all 2 rows read were rejected; most common reasons: 2 x non-text value: 'output' (column 'output') is bytes"),
    ("no_rows.parquet", {}, (0, 0, 0, 0, 0), [], {}, "no row kept: no rows read"),
]


@pytest.mark.parametrize(
    "file, options, account, kept, rejected, intake", LOADED,
    ids=[c[0] + ("[columns]" if "columns" in c[1] else "") for c in LOADED],
)
def test_a_loadable_instruction_file_accounts_for_every_row(file, options, account, kept, rejected, intake):
    src = source(file, **options)
    result = load_instructions([src], seed=0)
    assert_accounted(result.counts(), *account)
    assert [(e.source_row, e.instruction) for e in result.examples] == kept
    assert {r.source_row: r.reason for r in result.rejected} == rejected
    assert_intake("instructions", BAD / file, [e.source for e in result.examples], result.rejected, source_name(src), intake)


@pytest.mark.parametrize("file, marker", [("bom.jsonl", b"\xef\xbb\xbf"), ("bom.json", b"\xef\xbb\xbf"), ("crlf.jsonl", b"\r\n"),
                                          ("cr_only.jsonl", b"\r"), ("unicode_separators.jsonl", "\u2028".encode())])
def test_the_fixtures_hold_the_bytes_they_test(file, marker):
    """A checkout that normalized line endings or dropped the byte-order mark would test nothing."""
    data = (BAD / file).read_bytes()
    assert marker in data and (file != "cr_only.jsonl" or b"\n" not in data)


def test_a_very_long_line_loads_whole(tmp_path):
    """A 2 MB response on one JSONL line (too long for any model: data/instructions rejects it by tokens)."""
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"instruction": "Repeat the word.", "output": "word " * 400_000}) + "\n")
    result = load_instructions([InstructionSource(path=str(path))], seed=0)
    assert_accounted(result.counts(), 1, 0, 1, 1, 0)
    assert len(result.examples[0].output) == len("word " * 400_000) - 1


# ------------------------------------------------------------------------------ catalyst files

CATALYST_ID = CatalystColumns(id="id")


def test_a_truncated_catalyst_file_names_the_line():
    with pytest.raises(DataFormatError, match=r"catalyst_truncated\.jsonl: line 2: not valid JSON \(Unterminated string"):
        read_catalyst_file(FileCatalyst(path=str(BAD / "catalyst_truncated.jsonl")), 10, 0)


# file, columns, (rows, blank, read, kept, rejected), rejected {row: reason}, intake problem
CATALYST_LOADED = [
    ("catalyst_bom.json", CatalystColumns(), (2, 0, 2, 2, 0), {}, None),
    ("catalyst_not_enriched.jsonl", CatalystColumns(), (2, 0, 2, 0, 2),
     {1: "not enriched: r* is not longer than r0", 2: "not enriched: r* is not longer than r0"},
     "no row kept: all 2 rows read were rejected; most common reasons: 2 x not enriched: r* is not longer than r0"),
    ("catalyst_missing_rationale.jsonl", CatalystColumns(), (3, 0, 3, 1, 2),
     {1: "missing field: 'rationale' (column 'rationale')", 2: "empty field: 'rationale' (column 'rationale')"},
     "2 of 3 rows read were rejected (67%), 1 kept; most common reasons: 1 x missing field: 'rationale' (column 'rationale'); "
     "1 x empty field: 'rationale' (column 'rationale')"),
    ("catalyst_duplicate_ids.jsonl", CATALYST_ID, (2, 0, 2, 1, 1), {2: "duplicate: same catalyst example appears earlier in the file"}, None),
    ("catalyst_wrong_types.parquet", CatalystColumns(), (1, 0, 1, 0, 1), {1: "non-text value: 'rationale' (column 'rationale') is int"},
     "no row kept: all 1 rows read were rejected; most common reasons: 1 x non-text value: 'rationale' (column 'rationale') is int"),
]


@pytest.mark.parametrize("file, columns, account, rejected, intake", CATALYST_LOADED, ids=[c[0] for c in CATALYST_LOADED])
def test_a_loadable_catalyst_file_accounts_for_every_row(file, columns, account, rejected, intake):
    result = read_catalyst_file(FileCatalyst(path=str(BAD / file), columns=columns), 10, 0)
    assert_accounted(result.counts(), *account)
    assert {r.source_row: r.reason for r in result.rejected} == rejected
    assert all(len(r.rationale) > len(r.short_rationale) for r in result.records)
    assert_intake("catalyst", BAD / file, [r.source for r in result.records], result.rejected, "file", intake)


# ------------------------------------------------------------------------------ benchmark files

BENCHMARK_ERRORS = [
    ("gsm8k_missing_answer", "gsm8k", r"gsm8k/test\.jsonl, line 2: field 'answer' is missing or not a string"),
    ("gsm8k_invalid_utf8", "gsm8k", r"gsm8k/test\.jsonl: line 2: not UTF-8 text \(invalid continuation byte\)"),
    ("gsm8k_empty", "gsm8k", r"gsm8k_empty/eval/gsm8k: gsm8k \(test\) holds no questions"),
    ("gsm8k_word_answer", "gsm8k", r"gsm8k/test\.jsonl, line 2: the final answer 'eight' is not a number"),
    ("arc_deep_nesting", "arc_challenge", r"arc_challenge/test\.jsonl, line 1: invalid JSON \(nested too deeply to read\)"),
    ("arc_not_object", "arc_challenge", r"arc_challenge/test\.jsonl, line 2: expected a JSON object"),
    ("mmlu_invalid_utf8", "mmlu", r"astronomy_test\.csv: line 2: not UTF-8 text"),
    ("mmlu_bad_answer", "mmlu", r"astronomy_test\.csv, row 1 \(line 1\): answer 'E' is not one of A, B, C, D"),
    ("bbh_not_object", "bbh", r"boolean_expressions\.json, examples\[0\]: expected an object with input and target"),
]


@pytest.mark.parametrize("case, benchmark, message", BENCHMARK_ERRORS, ids=[c[0] for c in BENCHMARK_ERRORS])
def test_a_bad_benchmark_file_names_the_file_and_place(case, benchmark, message):
    with pytest.raises(BenchmarkFormatError, match=message):
        read_benchmark(benchmark, BAD_EVAL / case)


@pytest.mark.parametrize("case, benchmark, ids, first", [
    ("gsm8k_bom", "gsm8k", ["gsm8k/0", "gsm8k/1"], "Tom has 3 apples"),
    ("bbh_bom", "bbh", ["bbh/boolean_expressions/0"], "not True is"),
])
def test_a_benchmark_file_with_a_byte_order_mark_reads_every_question(case, benchmark, ids, first):
    questions = read_benchmark(benchmark, BAD_EVAL / case)
    assert [q.question_id for q in questions] == ids
    assert questions[0].question.startswith(first)


# ------------------------------------------------------------------------------ configs

CONFIGS = [
    ("tab.yaml", r"tab\.yaml \(line 3, column 1\): not valid YAML: found character '\\t'"),
    ("unknown_key.yaml", r"unknown_key\.yaml: unknown key 'sead' in 'instructions' \(did you mean 'seed'\?\)"),
    ("wrong_type.yaml", r"wrong_type\.yaml: catalyst\.size: Input should be a valid integer.*\(got 'many'\)"),
    ("negative_sample.yaml", r"negative_sample\.yaml: instructions\.sources\[0\]\.sample: Input should be greater than or equal to 1 \(got -5\)"),
    ("negative_size.yaml", r"negative_size\.yaml: catalyst\.size: Input should be greater than or equal to 1 \(got -1\)"),
    ("list_for_mapping.yaml", r"list_for_mapping\.yaml: catalyst: Input should be a valid dictionary"),
    ("mapping_for_list.yaml", r"mapping_for_list\.yaml: instructions\.sources: Input should be a valid list"),
    ("not_a_mapping.yaml", r"not_a_mapping\.yaml: the top level must be a mapping of sections, got list"),
    ("source_is_directory.yaml", r"source_is_directory\.yaml: instructions\.sources\[0\]\.path: is a directory, expected a file"),
    ("catalyst_file_is_directory.yaml", r"catalyst_file_is_directory\.yaml: catalyst\.file\.path: is a directory, expected a file"),
    ("corpus_is_directory.yaml", r"corpus_is_directory\.yaml: model\.bootstrap\.corpus\[0\]\.path: is a directory, expected a file"),
    ("base_is_file.yaml", r"base_is_file\.yaml: model\.base: is a file, expected a directory"),
    ("rejected_fraction_out_of_range.yaml",
     r"rejected_fraction_out_of_range\.yaml: instructions\.max_rejected_fraction: Input should be less than or equal to 1 \(got 1\.5\)"),
    ("unknown_format.yaml", r"unknown_format\.yaml: instructions\.sources\[0\]\.format: Input should be 'auto', 'json', 'jsonl' or 'parquet'"),
]


@pytest.mark.parametrize("file, message", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_a_bad_config_names_the_file_and_key(file, message):
    with pytest.raises(ConfigError, match=message):
        load_config(BAD_CONFIG / file)


# ------------------------------------------------------------------------------ the data assets stop


class WordEngine:
    """What the data assets ask of an engine: a chat rendering and token counts (here: words)."""

    max_length = 10_000

    def render_chat(self, messages: list[dict]) -> str:
        return "\n".join(m["content"] for m in messages)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) for t in texts]


def test_data_instructions_stops_when_a_source_keeps_nothing(micro_config):
    """Two sources: one mapped right, one whose column mapping matches nothing. Half the rows survive
    overall, but the second file kept none: the run stops naming it."""
    from srlm.intake import instructions_tables

    good = {"name": "mine", "path": str(BAD / "prompt_response.jsonl"), "columns": {"instruction": "prompt", "output": "response"}}
    config = load_config(micro_config({"instructions": {"sources": [good]}}))
    frame, _, counts = instructions_tables(config, WordEngine())
    assert frame.height == 2 and counts["rejected"] == 0

    unmapped = {"name": "theirs", "path": str(BAD / "bom.jsonl"), "columns": {"instruction": "question", "output": "answer"}}
    config = load_config(micro_config({"instructions": {"sources": [good, unmapped]}}))
    with pytest.raises(IntakeError) as info:
        instructions_tables(config, WordEngine())
    assert str(info.value).splitlines()[1:] == [
        f"  {BAD / 'bom.jsonl'}: no row kept: all 2 rows read were rejected; most common reasons: "
        "2 x missing field: 'instruction' (column 'question')"
    ]


def test_data_catalyst_stops_when_nothing_is_enriched(micro_config):
    from srlm.intake import catalyst_tables

    path = BAD / "catalyst_not_enriched.jsonl"
    config = load_config(micro_config({"catalyst": {"source": "file", "file": {"path": str(path)}}}))
    with pytest.raises(IntakeError, match="catalyst: too little of the data survived intake") as info:
        catalyst_tables(config, None, pl.DataFrame(), WordEngine())
    assert f"{path}: no row kept: all 2 rows read were rejected; most common reasons: 2 x not enriched" in str(info.value)
