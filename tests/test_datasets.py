"""Loading instruction data: one test per kind of bad input, asserting the error or the rejected count and reason."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srlm.config import InstructionSource, SourceColumns
from srlm.datasets import (
    DataFormatError,
    Rejected,
    RowAccountingError,
    load_instructions,
    read_rows,
    reject_too_long,
    split_answer,
)

BAD = Path(__file__).parent / "fixtures" / "bad_input"


def source(file: str, **kw) -> InstructionSource:
    return InstructionSource(path=str(BAD / file), **kw)


def reasons(result) -> dict[int, str]:
    return {r.source_row: r.reason for r in result.rejected}


def test_malformed_jsonl_names_file_and_line():
    with pytest.raises(DataFormatError, match=r"malformed\.jsonl: line 3: not valid JSON"):
        load_instructions([source("malformed.jsonl")], seed=0)


def test_malformed_json_array_names_file_and_line():
    with pytest.raises(DataFormatError, match=r"malformed\.json: line 3: not valid JSON"):
        load_instructions([source("malformed.json")], seed=0)


def test_json_that_is_not_an_array():
    with pytest.raises(DataFormatError, match=r"not_array\.json: line 1: a JSON file must hold an array"):
        list(read_rows(BAD / "not_array.json"))


def test_broken_parquet():
    with pytest.raises(DataFormatError, match=r"broken\.parquet: not a readable Parquet file"):
        list(read_rows(BAD / "broken.parquet"))


def test_non_utf8_names_the_line():
    with pytest.raises(DataFormatError, match=r"bad_utf8\.jsonl: line 2: not UTF-8"):
        list(read_rows(BAD / "bad_utf8.jsonl"))


def test_unknown_extension_asks_for_a_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("{}")
    with pytest.raises(DataFormatError, match="set format"):
        list(read_rows(path))


@pytest.fixture(scope="module")
def rows_result():
    return load_instructions([source("rows.jsonl")], seed=0)


def test_counts_add_up(rows_result):
    counts = rows_result.counts()
    assert counts["rows_in_files"] == 8 and counts["blank_lines"] == counts["excluded"] == counts["not_sampled"] == 0
    assert counts["read"] == 8 == counts["kept"] + counts["rejected"]
    assert counts["kept"] == 2 and counts["rejected"] == 6


def test_blank_lines_are_counted_not_dropped(tmp_path):
    path = tmp_path / "gappy.jsonl"
    row = '{"instruction": "Name a %s.", "output": "It."}'
    path.write_text("\n".join([row % "fruit", "", row % "tree", "   ", row % "bird", "[1]"]) + "\n")
    result = load_instructions([InstructionSource(path=str(path))], seed=0)
    counts = result.counts()
    assert (counts["rows_in_files"], counts["blank_lines"], counts["read"]) == (6, 2, 4)
    assert counts["kept"] == 3 and counts["rejected"] == 1
    assert [e.source_row for e in result.examples] == [1, 3, 5]  # row numbers stay the file's line numbers
    assert reasons(result) == {6: "not an object: the row is a list"}


def test_a_lost_row_breaks_the_account(rows_result):
    lost = load_instructions([source("rows.jsonl")], seed=0)
    lost.examples.pop()
    with pytest.raises(RowAccountingError, match="8 read; 1 kept \\+ 6 rejected"):
        lost.counts()


def test_missing_field_is_rejected(rows_result):
    assert reasons(rows_result)[2] == "missing field: 'instruction' (column 'instruction')"


def test_non_text_output_is_rejected(rows_result):
    assert reasons(rows_result)[3] == "non-text value: 'output' (column 'output') is int"


def test_empty_output_is_rejected(rows_result):
    assert reasons(rows_result)[4] == "empty field: 'output' (column 'output')"


def test_duplicate_is_rejected_and_points_to_the_first(rows_result):
    assert reasons(rows_result)[5] == "duplicate: same example as rows row 1"


def test_non_object_row_is_rejected(rows_result):
    assert reasons(rows_result)[6].startswith("not an object")


def test_non_text_input_is_rejected(rows_result):
    assert reasons(rows_result)[8] == "non-text value: 'input' (column 'input') is list"


def test_rejected_rows_keep_the_raw_row(rows_result):
    raw = {r.source_row: r.raw for r in rows_result.rejected}
    assert '"output": 42' in raw[3]


def test_missing_answer_delimiter_is_rejected():
    src = source("gsm_no_delimiter.jsonl", columns=SourceColumns(instruction="question", output="answer"), answer_delimiter="####")
    result = load_instructions([src], seed=0)
    assert [e.output for e in result.examples] == ["4"]
    assert result.examples[0].rationale == "2+2=4"
    assert result.rejected[0].reason == "missing answer delimiter: '####' not in the output"


def test_explicit_ids_duplicate_and_missing():
    src = source("ids.jsonl", columns=SourceColumns(id="id"))
    result = load_instructions([src], seed=0)
    assert [e.example_id for e in result.examples] == ["ids:a1"]
    assert reasons(result)[2].startswith("duplicate")
    assert reasons(result)[3].startswith("missing field: 'id'")


def test_duplicates_across_sources():
    result = load_instructions([source("rows.jsonl", name="first"), source("rows.jsonl", name="second")], seed=0)
    dupes = [r for r in result.rejected if r.source == "second" and r.reason.startswith("duplicate")]
    assert len(dupes) == 3  # rows 1, 5 and 7 of the second copy
    assert result.intake.read == 16 == result.counts()["kept"] + result.counts()["rejected"]


def test_too_long_examples_are_rejected_with_their_length():
    items = ["short", "very long"]
    kept, rejected = reject_too_long(items, [3, 900], 512, lambda item, reason: Rejected("s", 1, reason, item))
    assert kept == ["short"]
    assert rejected[0].reason == "too long: 900 tokens, the model takes 512"


def test_sample_is_seeded_and_counts_only_drawn_rows():
    a = load_instructions([source("rows.jsonl", sample=4)], seed=3)
    b = load_instructions([source("rows.jsonl", sample=4)], seed=3)
    assert (a.intake.read, a.intake.not_sampled, a.intake.rows_in_files) == (4, 4, 8)
    assert a.counts()["kept"] + a.counts()["rejected"] == 4
    assert [r.source_row for r in a.rejected] == [r.source_row for r in b.rejected]


def test_exclude_skips_rows_before_sampling():
    result = load_instructions([source("rows.jsonl")], seed=0, exclude={("Name a fruit.", "")}, exclude_reason="in D0")
    counts = result.counts()
    assert counts["excluded"] == counts["excluded: in D0"] == 2
    assert counts["read"] == 6 and counts["rows_in_files"] == 8


def test_parquet_source(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"q": ["What is up?", "Hi?"], "a": ["The sky.", ""]}), path)
    result = load_instructions([InstructionSource(path=str(path), columns=SourceColumns(instruction="q", output="a"))], seed=0)
    assert len(result.examples) == 1 and result.rejected[0].reason.startswith("empty field")


def test_split_answer_strips_calculator_marks():
    steps, answer = split_answer("He has 2*3 = <<2*3=6>>6 apples.\n#### 6", "####", strip_calc=True)
    assert steps == "He has 2*3 = 6 apples." and answer == "6"


def test_an_example_too_long_for_the_model_lands_in_the_rejected_table(micro_config, tmp_path):
    """Through what data/instructions writes, with the tiny model's real tokenizer and context."""
    from conftest import generation_resource
    from tiny_model import tiny_model_dir

    from srlm.config import load_config
    from srlm.intake import instructions_tables

    path = tmp_path / "d0.jsonl"
    rows = [{"instruction": "Name a fruit.", "output": "An apple."},
            {"instruction": "Summarize: " + " ".join(["the quiet river runs"] * 100), "output": "A river."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(micro_config({"instructions": {"sources": [{"name": "mine", "path": str(path)}]}}))
    engine = generation_resource(device="cpu", dtype="float32").engine(str(tiny_model_dir()))

    kept, rejected, counts = instructions_tables(config, engine)

    assert kept["instruction"].to_list() == ["Name a fruit."]
    assert 0 < kept["n_tokens"][0] <= engine.max_length
    assert rejected["source_row"].to_list() == [2] and json.loads(rejected["raw"][0])["output"] == "A river."
    n_tokens = int(re.fullmatch(r"too long: (\d+) tokens, the model takes (\d+)", rejected["reason"][0]).group(1))
    assert n_tokens > engine.max_length == 192
    assert (counts["read"], counts["kept"], counts["rejected"], counts["rejected: too long"]) == (2, 1, 1, 1)
