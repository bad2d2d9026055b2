import json
import re
import shutil

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURE_KIT
from fake_openai_server import FakeOpenAIServer

from srlm import prompts
from srlm.catalyst import derive, read_catalyst_file, steps_as_rationale, teach
from srlm.config import CatalystColumns, FileCatalyst, InstructionSource
from srlm.datasets import CALC_ANNOTATION, DataFormatError, Example, load_instructions
from srlm.engines.openai_engine import OpenAIChatEngine, OpenAIEngineError, OpenAIEngineSettings
from srlm.engines.types import SamplingParams
from srlm.prompts import skills_used

GSM8K_TRAIN = FIXTURE_KIT / "instruct" / "gsm8k_train" / "train.jsonl"
MARK = re.compile(r"^\[(decomposition|detail|summary)\] ")


def example(row=1, instruction="Q?", output="7", rationale="", input=""):
    return Example(f"ex{row}", "pool", row, instruction, input, output, rationale)


# ------------------------------------------------------------------------------------------------ derive


def gsm8k_pool():
    src = InstructionSource(
        path=str(GSM8K_TRAIN),
        columns={"instruction": "question", "output": "answer"},
        answer_delimiter="####",
        strip_calc_annotations=True,
        sample=10,
    )
    return load_instructions([src], seed=3).examples


def test_derive_on_gsm8k_uses_only_the_source_solution():
    pool = gsm8k_pool()
    source_lines = {json.loads(line)["question"]: json.loads(line)["answer"] for line in GSM8K_TRAIN.read_text().splitlines()}
    records, rejected = derive(pool)
    assert rejected == [] and len(records) == len(pool) == 10
    for ex, rec in zip(pool, records):
        solution = CALC_ANNOTATION.sub("", source_lines[rec.instruction])
        steps, final = (part.strip() for part in solution.rsplit("####", 1))
        # r0 is the bare final answer, y the same, r* the worked steps
        assert rec.short_rationale == final == rec.output == ex.output
        assert "####" not in rec.rationale and "<<" not in rec.rationale
        lines = rec.rationale.split("\n")
        # no invented text: every step is a line of the source solution, after its skill mark
        assert [MARK.sub("", line) for line in lines] == [s.strip() for s in steps.splitlines() if s.strip()]
        assert all(MARK.match(line) for line in lines)
        assert len(rec.rationale) > len(rec.short_rationale)
        assert rec.skills in ("detail", "decomposition,summary", "decomposition,detail,summary")
        assert rec.source == "derived" and rec.source_row == ex.source_row
    assert len({r.catalyst_id for r in records}) == len(records)
    assert derive(pool)[0] == records  # deterministic ids


def test_derive_rejects_rows_without_solution_or_not_longer():
    rows = [
        example(1, rationale="Step one.\n\n  Step two.  \n"),
        example(2, rationale=""),
        example(3, output="x" * 100, rationale="short"),
    ]
    records, rejected = derive(rows, source="gsm8k_train")
    assert [r.source_row for r in records] == [1]
    assert records[0].rationale == "[decomposition] Step one.\n[summary] Step two."
    assert records[0].source == "gsm8k_train"
    assert [(r.source, r.source_row) for r in rejected] == [("gsm8k_train", 2), ("gsm8k_train", 3)]
    assert rejected[0].reason.startswith("no worked solution")
    assert rejected[1].reason == "not enriched: r* is not longer than r0"
    assert json.loads(rejected[1].raw)["output"] == "x" * 100  # nothing is lost


def test_skills_used_in_first_use_order_case_insensitive():
    text = "[Checking] a\n[decomposition] b\n[checking] c\n[backward-thinking] d\n[cooking] e"
    assert skills_used(text) == "checking,decomposition,backward-thinking"
    assert skills_used("no marks") == ""
    assert steps_as_rationale("\n  a \n\nb") == "[decomposition] a\n[summary] b"
    assert steps_as_rationale("a\nb\nc\nd") == "[decomposition] a\n[detail] b\n[detail] c\n[summary] d"
    assert steps_as_rationale("only") == "[detail] only"


# ------------------------------------------------------------------------------------ read_catalyst_file

GOOD = {"instruction": "Add 2 and 3.", "input": "", "short_rationale": "5", "output": "5",
        "rationale": "[decomposition] 2 + 3 = 5.\n[checking] 5 - 3 = 2."}
BAD_ROWS = [
    ({"instruction": "No output", "short_rationale": "a", "rationale": "a longer one"}, "missing field: 'output'"),
    ({**GOOD, "instruction": "Numbers", "output": 5}, "non-text value: 'output'"),
    ({**GOOD, "instruction": "Blank", "rationale": "   "}, "empty field: 'rationale'"),
    ({**GOOD, "instruction": "Shorter", "short_rationale": "a very long short rationale", "rationale": "tiny"},
     "not enriched"),
    (dict(GOOD), "duplicate"),
]


def spec(path, **kw):
    return FileCatalyst(path=str(path), **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_result(result, n_good):
    assert result.intake.read == len(result.records) + len(result.rejected)
    assert len(result.records) == n_good
    counts = result.counts()
    assert counts["read"] == result.intake.read and counts["kept"] == n_good and counts["rejected"] == len(result.rejected)
    for rejected, (_, reason) in zip(result.rejected, BAD_ROWS):
        assert rejected.reason.startswith(reason), (rejected.reason, reason)
        assert rejected.source == "file" and json.loads(rejected.raw)


def test_read_jsonl_keeps_good_rows_and_rejects_bad_ones_with_reasons(tmp_path):
    second = {**GOOD, "instruction": "Add 1 and 1.", "input": "quickly", "output": "2", "short_rationale": ""}
    rows = [GOOD, second] + [r for r, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "cat.jsonl", rows)
    result = read_catalyst_file(spec(path), size=100, seed=0)
    check_result(result, 2)
    first, other = result.records
    assert (first.instruction, first.short_rationale, first.output, first.rationale) == (
        GOOD["instruction"], "5", "5", GOOD["rationale"])
    assert first.skills == "decomposition,checking" and first.source_row == 1
    assert (other.input, other.short_rationale, other.source_row) == ("quickly", "", 2)
    assert [r.source_row for r in result.rejected] == [3, 4, 5, 6, 7]


def test_read_parquet_with_mapped_columns_and_ids(tmp_path):
    mapping = {"instruction": "q", "input": "ctx", "short_rationale": "r0", "output": "y", "rationale": "r_star"}
    rename = lambda row: {mapping.get(k, k): v for k, v in row.items()}
    rows = [{**rename(GOOD), "uid": "a"}, {**rename(GOOD), "q": "Other", "uid": "b"}, {**rename(GOOD), "q": "Again", "uid": "a"}]
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    columns = CatalystColumns(**mapping, id="uid")
    result = read_catalyst_file(spec(path, columns=columns), size=100, seed=0)
    assert [r.catalyst_id for r in result.records] == ["file:a", "file:b"]
    assert [r.instruction for r in result.records] == ["Add 2 and 3.", "Other"]
    assert len(result.rejected) == 1 and result.rejected[0].reason.startswith("duplicate") and result.rejected[0].source_row == 3
    assert result.intake.read == 3


def test_read_samples_size_rows_seeded(tmp_path):
    rows = [{**GOOD, "instruction": f"Question {i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "cat.jsonl", rows)
    a = read_catalyst_file(spec(path), size=5, seed=1)
    b = read_catalyst_file(spec(path), size=5, seed=1)
    c = read_catalyst_file(spec(path), size=5, seed=2)
    assert a.intake.read == 5 and a.intake.not_sampled == 15 and len(a.records) == 5 and a.records == b.records
    assert [r.source_row for r in a.records] == sorted(r.source_row for r in a.records)  # file order
    assert [r.source_row for r in a.records] != [r.source_row for r in c.records]


def test_non_object_rows_are_rejected(tmp_path):
    path = tmp_path / "cat.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n[1, 2]\n\"text\"\n")
    result = read_catalyst_file(spec(path), size=10, seed=0)
    assert len(result.records) == 1 and result.intake.read == 3
    assert result.counts()["rows_in_files"] == 4 and result.counts()["blank_lines"] == 1
    assert [r.reason for r in result.rejected] == ["not an object: the row is a list", "not an object: the row is a str"]


def test_malformed_file_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + '{"instruction": "oops",\n')
    with pytest.raises(DataFormatError, match=r"broken\.jsonl: line 3: not valid JSON"):
        read_catalyst_file(spec(path), size=10, seed=0)
    bad_parquet = tmp_path / "broken.parquet"
    bad_parquet.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(DataFormatError, match=r"broken\.parquet: not a readable Parquet file"):
        read_catalyst_file(spec(bad_parquet), size=10, seed=0)


# ------------------------------------------------------------------------------------------------- teach


@pytest.fixture()
def server():
    with FakeOpenAIServer() as s:
        yield s


def teacher(server, params):
    """The teacher callback as the catalyst asset builds it: one chat per example, first completion."""
    engine = OpenAIChatEngine(OpenAIEngineSettings(base_url=server.base_url, model="fake-model", api_key_env=None,
                                                 max_retries=1, retry_backoff_s=0.01, timeout_s=5))

    def generate(examples):
        messages = [prompts.teacher_messages(e.instruction, e.input, e.rationale or e.output, e.output) for e in examples]
        return [(o.completions[0].text, o.completions[0].finish_reason) for o in engine.generate(messages, params)]

    return generate


def test_teach_with_an_openai_teacher(server):
    pool = [example(1, "What is 3 + 4?", "7", "3 + 4 = 7"), example(2, "Name a colour.", "red")]
    records, rejected = teach(pool, teacher(server, SamplingParams(temperature=0.0, max_new_tokens=500, seed=5)))
    assert rejected == [] and len(records) == 2
    assert len(server.requests) == 2
    bodies = sorted((b for _, b in server.requests), key=lambda b: "colour" in b["messages"][0]["content"])
    for body, ex, rec in zip(bodies, pool, records):
        content = body["messages"][-1]["content"]
        for skill in prompts.SKILLS:  # the eight meta-reasoning skills are in the teacher's prompt
            assert skill in content
        assert ex.instruction in content and ex.output in content
        # the teacher's answer is r* (the fake server reverses the prompt's words after "c0 s5")
        assert rec.rationale == " ".join(["c0", "s5", *reversed(content.split())])
        assert rec.short_rationale == (ex.rationale or ex.output) and rec.output == ex.output
        assert rec.source == "teacher" and rec.source_row == ex.source_row
    assert "### Short rationale\n3 + 4 = 7" in bodies[0]["messages"][0]["content"]
    assert "### Short rationale\nred" in bodies[1]["messages"][0]["content"]


def test_teach_rejects_empty_and_cut_off_answers(server):
    pool = [example(1, "What is 3 + 4?", "7", "3 + 4 = 7"), example(2, "Name a colour.", "red")]
    # the fake server cuts each answer at the stop string, here its very start: an empty answer
    records, rejected = teach(pool, teacher(server, SamplingParams(max_new_tokens=500, stop=("c0",))))
    assert records == []
    assert [r.reason for r in rejected] == ["empty field: the teacher wrote nothing"] * 2
    assert json.loads(rejected[0].raw)["teacher_output"] == ""
    records, rejected = teach(pool, teacher(server, SamplingParams(max_new_tokens=3)))
    assert records == []
    assert [r.reason for r in rejected] == ["teacher output cut off: finish_reason length"] * 2
    assert json.loads(rejected[1].raw)["teacher_output"] == "c0 s0 red"


def test_teach_server_error_stops_the_whole_catalyst(server):
    server.fail_next(500, times=5)
    with pytest.raises(OpenAIEngineError, match="HTTP 500"):
        teach([example(1)], teacher(server, SamplingParams()))


def test_teach_cleans_think_tags_and_checks_each_answer():
    pool = [example(i, f"Q{i}", "42", "6 * 7 = 42") for i in range(1, 6)]
    answers = [
        ("<think>[reflection] Recall 6 * 7.\n[checking] 42 / 7 = 6.</think>\n42", "stop"),
        ("   ", "stop"),
        ("6*7", "stop"),
        ("[detail] a long enough rationale that is cut", "length"),
        ("[analogy] Like 7 * 6 = 42, so six sevens are 42.", "stop"),
    ]
    records, rejected = teach(pool, lambda examples: answers[: len(examples)])
    assert [r.source_row for r in records] == [1, 5]
    assert records[0].rationale == "[reflection] Recall 6 * 7.\n[checking] 42 / 7 = 6."
    assert records[0].skills == "reflection,checking" and records[1].skills == "analogy"
    assert [(r.source_row, r.reason.split(":")[0]) for r in rejected] == [
        (2, "empty field"), (3, "not enriched"), (4, "teacher output cut off")]
    with pytest.raises(ValueError):  # one answer per example, no silent truncation
        teach(pool, lambda examples: answers[:2])


# ------------------------------------------------------------------ the catalyst asset's path, real model

@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory):
    """The tiny model with its position limit raised from 192 to 1024 tokens (RoPE has no learned positions),
    so the ~550-token teacher prompt fits: a local HF model directory like any other."""
    from tiny_model import tiny_model_dir

    out = tmp_path_factory.mktemp("teacher") / "model"
    shutil.copytree(tiny_model_dir(), out)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        settings = json.loads((out / name).read_text())
        settings[key] = 1024
        (out / name).write_text(json.dumps(settings))
    return out


ALPACA = FIXTURE_KIT / "instruct" / "alpaca_5000" / "alpaca_5000.json"
ALPACA_POOL = {"path": str(ALPACA), "columns": {"instruction": "instruction", "input": "input", "output": "output"},
               "answer_delimiter": None, "strip_calc_annotations": False}


def gsm8k_rows():
    return [json.loads(line) for line in GSM8K_TRAIN.read_text().splitlines()]


def build_catalyst(micro_config, model, catalyst, d0_rows):
    """What the data/catalyst asset writes, with D0 holding `d0_rows` (pool rows the catalyst must skip)."""
    from conftest import generation_resource

    from srlm.config import load_config
    from srlm.intake import catalyst_tables

    config = load_config(micro_config({"catalyst": catalyst}))
    columns = config.catalyst.pool.columns
    d0 = pl.DataFrame({"instruction": [r[columns.instruction].strip() for r in d0_rows],
                       "input": [r.get(columns.input, "").strip() for r in d0_rows]})
    generation = generation_resource(device="cpu", dtype="float32")
    return config, generation, catalyst_tables(config, generation, d0, generation.engine(str(model)))


def assert_every_pool_row_accounted(counts, kept, rejected, pool_size, in_d0, size):
    assert counts["rows_in_files"] == pool_size and counts["blank_lines"] == 0
    assert counts["excluded"] == counts["excluded: in D0"] == in_d0
    assert counts["not_sampled"] == pool_size - in_d0 - size
    assert counts["read"] == size == counts["kept"] + counts["rejected"]
    assert (counts["kept"], counts["rejected"]) == (kept.height, rejected.height)


def test_derived_catalyst_skips_rows_in_d0_and_reports_them(micro_config, long_context_model):
    in_d0 = gsm8k_rows()[:3]
    _, _, (kept, rejected, counts) = build_catalyst(micro_config, long_context_model, {"source": "derived", "size": 10}, in_d0)
    assert_every_pool_row_accounted(counts, kept, rejected, len(gsm8k_rows()), in_d0=3, size=10)
    assert kept.height == 10 and not set(kept["instruction"]) & {r["question"].strip() for r in in_d0}


def test_teacher_catalyst_with_a_local_transformers_model(micro_config, long_context_model):
    teacher = {"backend": "transformers", "model": str(long_context_model), "temperature": 1.0, "max_new_tokens": 60}
    alpaca = json.loads(ALPACA.read_text())
    # the tiny random teacher writes mostly unusable rationales: no bound on the rejected share here
    catalyst = {"source": "teacher", "size": 6, "pool": ALPACA_POOL, "teacher": teacher, "max_rejected_fraction": 1.0}
    config, generation, (kept, rejected, counts) = build_catalyst(micro_config, long_context_model, catalyst, alpaca[:2])
    assert_every_pool_row_accounted(counts, kept, rejected, len(alpaca), in_d0=2, size=6)
    assert kept.height >= 1

    # every r* (or rejected teacher answer) is what the local model writes for that row's teacher prompt
    spec = config.catalyst
    pool = load_instructions([spec.pool.model_copy(update={"sample": spec.size})], spec.seed,
                             exclude={(r["instruction"], r["input"]) for r in alpaca[:2]}).examples
    messages = [prompts.teacher_messages(e.instruction, e.input, e.rationale or e.output, e.output) for e in pool]
    outputs = generation.teacher("transformers", str(long_context_model)).generate(
        messages, SamplingParams(temperature=1.0, max_new_tokens=60, seed=spec.seed))
    written = {e.source_row: o.completions[0] for e, o in zip(pool, outputs)}
    for row in kept.iter_rows(named=True):
        assert written[row["source_row"]].finish_reason == "stop"
        assert row["rationale"] == prompts.strip_think(written[row["source_row"]].text)
        assert row["source"] == "teacher" and len(row["rationale"]) > len(row["short_rationale"]) > 0
    for row in rejected.iter_rows(named=True):
        assert json.loads(row["raw"])["teacher_output"] == written[row["source_row"]].text
        assert row["reason"].startswith(("teacher output cut off", "not enriched", "empty field"))
    assert sorted(kept["source_row"].to_list() + rejected["source_row"].to_list()) == sorted(written)
