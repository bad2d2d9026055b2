import json
import shutil
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from conftest import engine_settings
from tiny_model import tiny_model_dir

from srlm import prompts
from srlm.engines.transformers_engine import TransformersEngine
from srlm.engines.types import SamplingParams
from srlm.expansion import CANDIDATE_SCHEMA, ExpansionSettings, ExpansionTask, expand, recipe_key, shard_seed, shard_tasks

PARAMS = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=11)
SETTINGS = ExpansionSettings(iteration=1, checkpoint_id="ckpt-0", params=PARAMS, shard_size=2)
TASKS = [
    ExpansionTask(f"ex{i}", f"parent{i}", f"{name} has {a} apples and gets {b} more. How many apples?", "",
                  "" if i % 2 else f"{a} + {b} = {a + b}.", f"{name} has {a + b} apples.")
    for i, (name, a, b) in enumerate([("Ada", 3, 4), ("Ben", 5, 2), ("Cleo", 8, 9), ("Dan", 1, 6), ("Eve", 7, 7)])
][::-1]  # out of order on purpose: shards follow example_id order


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny test model with a wider window (RoPE: the weights do not depend on it), so the enrich
    prompt fits."""
    out = tmp_path_factory.mktemp("tiny-wide")
    shutil.copytree(tiny_model_dir(), out, dirs_exist_ok=True)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        data = json.loads((out / name).read_text())
        data[key] = 512
        (out / name).write_text(json.dumps(data))
    return out


def fresh_engine(model_dir):
    return TransformersEngine(model_dir, engine_settings(batch_size=4))


class Counting:
    """Wraps an engine: counts generate calls (and the prompts in them); can crash on the k-th call."""

    def __init__(self, engine, crash_on_call=None):
        self.engine, self.crash_on_call = engine, crash_on_call
        self.calls: list[list] = []

    def generate(self, prompts, params, adapter=None):
        self.calls.append(list(prompts))
        if len(self.calls) == self.crash_on_call:
            raise RuntimeError("killed mid-run")
        return self.engine.generate(prompts, params, adapter=adapter)


def shard_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def comparable(table):
    return table.drop_columns(["run_id"]).sort_by([("example_id", "ascending"), ("sample_index", "ascending")]).to_pylist()


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """An uninterrupted run in its own folder."""
    folder = tmp_path_factory.mktemp("reference") / "shards"
    engine = Counting(fresh_engine(model_dir))
    logs = []
    table, counts = expand(TASKS, engine, SETTINGS, folder, "run-ref", log=logs.append)
    return table, counts, engine, folder, logs


def test_uninterrupted_run_commits_one_file_per_shard(reference):
    table, counts, engine, folder, logs = reference
    assert counts == {"shards": 3, "reused": 0, "generated": 3}
    assert len(engine.calls) == 3 and [len(c) for c in engine.calls] == [2, 2, 1]
    assert shard_files(folder) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert len(logs) == 3 and logs[0].startswith("shard 1/3: 2 examples, 4 candidates")
    assert table.schema == CANDIDATE_SCHEMA and table.num_rows == len(TASKS) * PARAMS.n
    # each committed file holds exactly its shard's rows
    for index in range(3):
        on_disk = pq.read_table(folder / f"shard-{index:05d}.parquet")
        assert on_disk.to_pylist() == [r for r in table.to_pylist() if r["shard"] == index]
    rows = table.to_pylist()
    by_example = {t.example_id: t for t in TASKS}
    assert [r["example_id"] for r in rows] == [e for e in sorted(by_example) for _ in range(PARAMS.n)]
    assert [r["shard"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    for r in rows:
        assert r["seed"] == shard_seed(PARAMS.seed, 1, r["shard"])
        assert r["parent_id"] == by_example[r["example_id"]].parent_id
        assert (r["iteration"], r["checkpoint_id"], r["run_id"]) == (1, "ckpt-0", "run-ref")
        assert (r["temperature"], r["top_p"], r["prompt_template"]) == (1.0, 0.95, prompts.ENRICH_VERSION)
        assert 1 <= r["n_tokens"] <= 12 and r["finish_reason"] in ("stop", "length")
    assert len({r["candidate_id"] for r in rows}) == len(rows)
    assert len({shard_seed(PARAMS.seed, 1, s) for s in range(3)}) == 3
    # the prompts are the enrich prompts of each task
    first = sorted(TASKS, key=lambda t: t.example_id)[0]
    assert engine.calls[0][0] == prompts.enrich_messages(first.instruction, first.input, first.rationale, first.output)
    # sampling really happened: the two samples of some example differ
    assert any(rows[i]["text"] != rows[i + 1]["text"] for i in range(0, len(rows), 2))


def test_interrupted_run_resumes_only_unfinished_shards(reference, model_dir, tmp_path):
    ref_table = reference[0]
    folder = tmp_path / "shards"
    crashing = Counting(fresh_engine(model_dir), crash_on_call=2)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        expand(TASKS, crashing, SETTINGS, folder, "run-1")
    assert len(crashing.calls) == 2
    assert shard_files(folder) == ["shard-00000.parquet"]  # the finished shard only, no partial file

    resumed_engine = Counting(fresh_engine(model_dir))
    table, counts = expand(TASKS, resumed_engine, SETTINGS, folder, "run-2")
    assert counts == {"shards": 3, "reused": 1, "generated": 2}
    assert len(resumed_engine.calls) == 2
    second_shard = sorted(TASKS, key=lambda t: t.example_id)[2:4]
    assert resumed_engine.calls[0] == [prompts.enrich_messages(t.instruction, t.input, t.rationale, t.output) for t in second_shard]
    assert shard_files(folder) == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    # shard 0 was read back from the first run, the rest generated by the second
    assert {(r["shard"], r["run_id"]) for r in table.to_pylist()} == {(0, "run-1"), (1, "run-2"), (2, "run-2")}
    assert comparable(table) == comparable(ref_table)

    # a third run finds everything done and generates nothing
    idle = Counting(fresh_engine(model_dir), crash_on_call=1)
    again, counts = expand(TASKS, idle, SETTINGS, folder, "run-3")
    assert counts == {"shards": 3, "reused": 3, "generated": 0} and idle.calls == []
    assert comparable(again) == comparable(ref_table)


def test_a_crash_while_writing_leaves_no_partial_shard(reference, model_dir, tmp_path, monkeypatch):
    import srlm.storage

    folder = tmp_path / "shards"
    real_write = srlm.storage.pq.write_table
    writes = []

    def failing_write(table, where, **kw):
        writes.append(table.num_rows)
        if len(writes) == 2:
            where.write(b"PAR1 half a file")
            raise OSError("disk full")
        return real_write(table, where, **kw)

    monkeypatch.setattr(srlm.storage.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        expand(TASKS, Counting(fresh_engine(model_dir)), SETTINGS, folder, "run-1")
    assert shard_files(folder) == ["shard-00000.parquet"]  # no half-written shard, no temp file
    monkeypatch.setattr(srlm.storage.pq, "write_table", real_write)

    engine = Counting(fresh_engine(model_dir))
    table, counts = expand(TASKS, engine, SETTINGS, folder, "run-2")
    assert counts["reused"] == 1 and len(engine.calls) == 2
    assert comparable(table) == comparable(reference[0])


def test_empty_task_list(tmp_path):
    engine = Counting(None, crash_on_call=1)
    table, counts = expand([], engine, SETTINGS, tmp_path / "shards", "run")
    assert table.num_rows == 0 and table.schema == CANDIDATE_SCHEMA
    assert counts == {"shards": 0, "reused": 0, "generated": 0} and engine.calls == []


def test_shard_tasks_orders_by_example_id():
    shards = shard_tasks(TASKS, 2)
    assert [[t.example_id for t in s] for s in shards] == [["ex0", "ex1"], ["ex2", "ex3"], ["ex4"]]
    assert [[t.example_id for t in s] for s in shard_tasks(TASKS, 10)] == [["ex0", "ex1", "ex2", "ex3", "ex4"]]


def test_recipe_key_changes_with_what_determines_the_shards():
    base = recipe_key(TASKS, SETTINGS, "adapters/m0")
    assert base == recipe_key(list(reversed(TASKS)), SETTINGS, "adapters/m0")  # task order does not matter
    assert len(base) == 16
    variants = {
        "temperature": recipe_key(TASKS, replace(SETTINGS, params=replace(PARAMS, temperature=0.7)), "adapters/m0"),
        "top_p": recipe_key(TASKS, replace(SETTINGS, params=replace(PARAMS, top_p=0.9)), "adapters/m0"),
        "n": recipe_key(TASKS, replace(SETTINGS, params=replace(PARAMS, n=3)), "adapters/m0"),
        "max_new_tokens": recipe_key(TASKS, replace(SETTINGS, params=replace(PARAMS, max_new_tokens=13)), "adapters/m0"),
        "seed": recipe_key(TASKS, replace(SETTINGS, params=replace(PARAMS, seed=12)), "adapters/m0"),
        "stop": recipe_key(TASKS, replace(SETTINGS, params=replace(PARAMS, stop=("###",))), "adapters/m0"),
        "adapter": recipe_key(TASKS, SETTINGS, "adapters/m1"),
        "no adapter": recipe_key(TASKS, SETTINGS, None),
        "checkpoint": recipe_key(TASKS, replace(SETTINGS, checkpoint_id="ckpt-1"), "adapters/m0"),
        "iteration": recipe_key(TASKS, replace(SETTINGS, iteration=2), "adapters/m0"),
        "shard_size": recipe_key(TASKS, replace(SETTINGS, shard_size=3), "adapters/m0"),
        "parent": recipe_key([replace(TASKS[0], parent_id="other"), *TASKS[1:]], SETTINGS, "adapters/m0"),
        "subset": recipe_key(TASKS[1:], SETTINGS, "adapters/m0"),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)
