"""The Ray executor (srlm/distributed.py, srlm/ray_vllm.py): the seeded-row contract of the transformers engine,
row ids, Parquet parts that a rerun skips, the vLLM processor's rows and config (against a fake that speaks
ray.data.llm's interface: no vLLM here), and, on a local Ray with 2 CPUs (slow), the same texts and scores as
the local engine, then the micro experiment end to end with `executor.kind: ray`."""

import os
import subprocess
import sys
from types import SimpleNamespace

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DEFAULTS, engine_settings, write_micro_config
from test_storage import bucket, endpoint, s3  # noqa: F401  (a local S3 server, moto)
from tiny_model import tiny_adapter_dir, tiny_chats, tiny_model_dir

from srlm import distributed, ray_vllm
from srlm.config import ConfigError, load_config
from srlm.distributed import RayEngine, RaySettings, actor_cpus, generation_rows, job_metadata, scoring_rows
from srlm.engines.tokenization import encode_pair, sequence_seed
from srlm.engines.transformers_engine import TransformersEngine
from srlm.engines.types import SamplingParams
from srlm.engines.vllm_engine import VLLMEngineSettings
from srlm.storage import Storage

SETTINGS = engine_settings(batch_size=4)
VLLM_SETTINGS = VLLMEngineSettings(dtype="auto", gpu_memory_utilization=0.85, tensor_parallel_size=1, lora_rank=8,
                                   trust_remote_code=False)
SAMPLED = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=5)


def ray_settings(**changes) -> RaySettings:
    """configs/default.yaml's executor section with `changes`."""
    keys = ("address", "num_cpus", "actors", "cpus_per_actor")
    return RaySettings(**{**{k: DEFAULTS["executor"][k] for k in keys}, **changes})


def chats(n, seed=3):
    return [chat[:1] for chat in tiny_chats(n, seed=seed)]


@pytest.fixture(scope="module")
def engine():
    return TransformersEngine(tiny_model_dir(), SETTINGS)


# ------------------------------------------------------------------------------------- the seeded-row contract


def test_rows_draw_the_samples_generate_draws_in_any_grouping(engine):
    prompts = chats(5) + ["A raw prompt"]
    outs = engine.generate(prompts, SAMPLED)
    rows = [(p, j) for p in prompts for j in range(3)]
    reordered = list(reversed(rows))  # other batches, other padding
    by_row = dict(zip(map(str, reordered), engine.generate_rows(reordered, SAMPLED)))
    assert [by_row[str(r)] for r in rows] == [c for o in outs for c in o.completions]
    alone = engine.generate_rows([(prompts[2], 1)], SAMPLED)  # one row by itself
    assert alone == [outs[2].completions[1]]


def test_greedy_rows_ignore_the_sample_index(engine):
    params = SamplingParams(n=2, temperature=0, max_new_tokens=10)
    prompt = chats(1)[0]
    first, second = engine.generate_rows([(prompt, 0), (prompt, 5)], params)
    assert first == second == engine.generate([prompt], params)[0].completions[0]


def test_a_row_too_long_for_the_context_is_refused(engine):
    with pytest.raises(ValueError, match=r"row 0 has \d+ tokens: no room to generate"):
        engine.generate_rows([("word " * 400, 0)], SAMPLED)


# ----------------------------------------------------------------------------------------------- rows and parts


def test_generation_rows_are_one_per_sample_with_stable_ids():
    prompts = chats(2)
    rows = generation_rows(prompts, SAMPLED, "recipe")
    assert [r["sample_index"] for r in rows] == [0, 1, 2, 0, 1, 2]
    assert len({r["row_id"] for r in rows}) == 6
    assert generation_rows(prompts, SAMPLED, "recipe") == rows  # stable
    assert generation_rows(prompts, SAMPLED, "other")[0]["row_id"] != rows[0]["row_id"]
    assert distributed.decode_prompt(rows[3]["prompt"]) == prompts[1]
    greedy = generation_rows(prompts, SamplingParams(n=4, temperature=0), "recipe")
    assert [r["sample_index"] for r in greedy] == [0, 0]  # greedy: one decode per prompt
    assert len(distributed.distinct(generation_rows(prompts + prompts[:1], SAMPLED, "r"))) == 6  # a repeated prompt once


def test_the_recipe_leaves_out_how_many_samples_a_prompt_gets():
    more = SamplingParams(**{**SAMPLED.__dict__, "n": 5})
    assert distributed.sampling_recipe(more) == distributed.sampling_recipe(SAMPLED)
    hotter = SamplingParams(**{**SAMPLED.__dict__, "temperature": 0.5})
    assert distributed.sampling_recipe(hotter) != distributed.sampling_recipe(SAMPLED)


def test_parts_are_committed_found_and_read_back_by_kind(tmp_path):
    store, output = Storage(tmp_path), str(tmp_path / "rows")
    rows = scoring_rows([("ctx", " a"), ("ctx", " b")], "recipe")
    ids = [r["row_id"] for r in rows]
    batch = pa.Table.from_pylist([{"row_id": ids[0], "total": -1.5, "n_tokens": 2}], schema=distributed.SCORING_RESULT)
    assert distributed.commit_part(batch, store.record(), output, "logprobs")["row_id"].to_pylist() == ids[:1]
    distributed.commit_part(batch, store.record(), output, "logprobs")  # a retried batch rewrites its part
    assert [p.name for p in (tmp_path / "rows").iterdir()] == [os.path.basename(distributed.part_path(output, "logprobs", ids[:1]))]
    assert set(distributed.read_results(store, output, "logprobs", set(ids))) == {ids[0]}
    assert set(distributed.read_results(store, output, "generate", set(ids))) == set()
    found = distributed.read_results(store, output, "logprobs", set(ids))
    assert found == {ids[0]: {"row_id": ids[0], "total": -1.5, "n_tokens": 2}}


def test_actor_cpus_share_a_local_ray_and_refuse_a_pool_that_does_not_fit():
    fake_ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 4.0})
    assert actor_cpus(fake_ray, ray_settings(actors=2)) == 2
    assert actor_cpus(fake_ray, ray_settings(actors=1, cpus_per_actor=3)) == 3
    with pytest.raises(ValueError, match="3 actors x 2 CPUs do not fit the 4 CPUs"):
        actor_cpus(fake_ray, ray_settings(actors=3, cpus_per_actor=2))
    assert actor_cpus(fake_ray, ray_settings(address="auto", actors=8)) == 1  # a cluster's CPUs are its own business


def test_a_local_engine_records_no_ray_job(engine):
    assert job_metadata(engine) == {}


def test_the_executor_section(micro_config):
    cfg = load_config(micro_config({"executor": {"kind": "ray", "num_cpus": 2, "actors": 2}}))
    assert (cfg.executor.kind, cfg.executor.num_cpus, cfg.executor.actors, cfg.executor.cpus_per_actor) == ("ray", 2, 2, None)
    with pytest.raises(ConfigError, match="num_cpus sizes a Ray started on this machine"):
        load_config(micro_config({"executor": {"kind": "ray", "address": "auto", "num_cpus": 2}}))
    with pytest.raises(ConfigError, match="executor.kind"):
        load_config(micro_config({"executor": {"kind": "dask"}}))


# ---------------------------------------------------------------------------------------- vLLM through ray.data.llm


def test_vllm_rows_are_one_sample_each_with_its_own_seed(engine):
    prompt = chats(1)[0]
    rows = generation_rows([prompt], SAMPLED, "r")
    requests = [ray_vllm.generation_request(r, engine.tokenizer, SAMPLED, 60) for r in rows]
    ids = engine.tokenizer(engine.render_chat(prompt), add_special_tokens=False)["input_ids"]
    assert [q["seed"] for q in requests] == [sequence_seed(5, ids, j) & 0x7FFF_FFFF for j in range(3)]
    assert all(q["tokenized_prompt"] == ids and q["max_tokens"] == min(12, 60 - len(ids)) for q in requests)
    row = ray_vllm.preprocess(requests[1], "generate", SAMPLED, [7], lora="/ckpt/M1")
    assert row["sampling_params"]["n"] == 1 and row["sampling_params"]["seed"] == requests[1]["seed"]
    assert row["sampling_params"]["stop_token_ids"] == [7] and row["model"] == "/ckpt/M1"
    assert "model" not in ray_vllm.preprocess(requests[1], "generate", SAMPLED, [7], lora=None)
    greedy = ray_vllm.generation_request(rows[0], engine.tokenizer, SamplingParams(temperature=0), 60)
    assert greedy["seed"] is None


def test_vllm_results_become_result_rows():
    done = {"row_id": "a", "generated_text": "hi", "generated_tokens": [4, 7], "num_generated_tokens": 2, "max_tokens": 2}
    assert ray_vllm.postprocess(done, "generate", [7]) == {"row_id": "a", "text": "hi", "n_tokens": 2, "finish_reason": "stop"}
    cut = {**done, "generated_tokens": [4, 5]}
    assert ray_vllm.postprocess(cut, "generate", [7])["finish_reason"] == "length"
    short = {**cut, "max_tokens": 9}  # ended on a stop string before its budget
    assert ray_vllm.postprocess(short, "generate", [7])["finish_reason"] == "stop"
    scored = {"row_id": "b", "prompt_token_ids": [1, 2, 3, 4], "n_scored": 2,
              "prompt_logprobs": [None, {2: {"logprob": -9.0}}, {"3": {"logprob": -1.0}}, {4: {"logprob": -0.5}}]}
    assert ray_vllm.postprocess(scored, "logprobs", [7]) == {"row_id": "b", "total": -1.5, "n_tokens": 2}
    with pytest.raises(RuntimeError, match="lack the scored token 4"):
        ray_vllm.postprocess({**scored, "prompt_logprobs": [None, None, {3: {"logprob": -1.0}}, {5: {"logprob": -2.0}}]}, "logprobs", [7])


def test_vllm_scoring_rows_keep_the_continuation_and_room_for_one_token(engine):
    context, continuation = engine.render_chat(chats(1)[0]), " The green forest is quiet."
    ctx, cont = encode_pair(engine.tokenizer, context, continuation)
    row = ray_vllm.scoring_request(scoring_rows([(context, continuation)], "r")[0], engine.tokenizer, 500)
    assert row["tokenized_prompt"] == ctx + cont and row["n_scored"] == len(cont)
    tight = ray_vllm.scoring_request(scoring_rows([(context, continuation)], "r")[0], engine.tokenizer, len(cont) + 3)
    assert tight["tokenized_prompt"] == (ctx + cont)[-(len(cont) + 2):] and tight["n_scored"] == len(cont)


def test_vllm_adapters_go_per_row_by_path_or_by_name_under_the_stored_checkpoints(tmp_path):
    assert ray_vllm.lora_target(None, Storage(tmp_path)) == (None, None)
    assert ray_vllm.lora_target("/home/x/checkpoints/iter_1/M1-a", Storage(tmp_path)) == ("/home/x/checkpoints/iter_1/M1-a", None)
    store = Storage("s3://bucket/exp")
    assert ray_vllm.lora_target("s3://bucket/exp/checkpoints/iter_1/M1-a", store) == ("iter_1/M1-a", "s3://bucket/exp/checkpoints")
    with pytest.raises(ValueError, match="loads stored adapters from s3://bucket/exp/checkpoints/"):
        ray_vllm.lora_target("s3://elsewhere/M1-a", store)


def test_the_real_vllm_processor_accepts_the_config_and_the_rows(engine):
    """ray.data.llm builds the processor without vLLM: its first stage is the vLLM engine stage, which takes
    our preprocessed rows (no chat template or tokenizer stage runs before it)."""
    from ray.data.llm import build_processor

    processor_config = ray_vllm.processor_config("/models/m", VLLM_SETTINGS, 16, 2, "s3://b/checkpoints")
    processor = build_processor(processor_config, preprocess=lambda r: r, postprocess=lambda r: r)
    assert processor.list_stage_names() == ["vLLMEngineStage"]
    stage = processor.get_stage_by_name("vLLMEngineStage")
    kwargs = stage.fn_constructor_kwargs
    assert kwargs["model"] == "/models/m" and kwargs["dynamic_lora_loading_path"] == "s3://b/checkpoints"
    assert kwargs["engine_kwargs"]["enable_lora"] and kwargs["engine_kwargs"]["max_lora_rank"] == 8
    row = ray_vllm.preprocess(ray_vllm.generation_request(generation_rows(chats(1), SAMPLED, "r")[0], engine.tokenizer, SAMPLED, 60),
                              "generate", SAMPLED, [2], lora="iter_1/M1-a")
    known = set(stage.get_required_input_keys()) | set(stage.get_optional_input_keys())
    assert set(stage.get_required_input_keys()) <= set(row)
    assert set(row) - {"row_id", "max_tokens"} <= known  # the rest is carried through to postprocess


# --------------------------------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def local_ray():
    """A Ray on 2 CPUs for this module; its workers unpickle this module's fakes by value (they cannot import
    the tests folder)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.shutdown()  # a Ray an earlier test started implicitly (Ray Data does on first use): this one has 2 CPUs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.slow
def test_ray_writes_the_local_engines_texts_and_scores_and_a_rerun_skips_them(local_ray, engine, tmp_path):
    store, output = Storage(tmp_path), str(tmp_path / "rows")
    ray_engine = RayEngine(str(tiny_model_dir()), "transformers", SETTINGS, ray_settings(actors=2), store, output, batch_size=4)
    prompts = chats(6)
    adapter = str(tiny_adapter_dir())
    assert ray_engine.generate(prompts, SAMPLED, adapter=adapter) == engine.generate(prompts, SAMPLED, adapter=adapter)
    requests = [(engine.render_chat(p), " The green forest is quiet.") for p in prompts]
    local = engine.logprobs(requests, adapter=adapter)
    remote = ray_engine.logprobs(requests, adapter=adapter)
    assert [r.n_tokens for r in remote] == [r.n_tokens for r in local]
    assert [r.total for r in remote] == pytest.approx([r.total for r in local], abs=1e-5)
    meta = job_metadata(ray_engine)
    assert meta["ray/rows_computed"] == 6 * 3 + 6 and meta["ray/rows_reused"] == 0
    assert meta["ray/datasets"].count("srlm-generate") == 1 and meta["ray/output"] == output

    # a rerun finds every row written; a lost part is computed again, and only its rows
    again = RayEngine(str(tiny_model_dir()), "transformers", SETTINGS, ray_settings(actors=2), store, output, batch_size=4)
    assert again.generate(prompts, SAMPLED, adapter=adapter) == engine.generate(prompts, SAMPLED, adapter=adapter)
    assert (again.jobs[0].computed, again.jobs[0].dataset) == (0, None)
    lost = sorted((tmp_path / "rows").glob("logprobs-*.parquet"))[0]
    lost_rows = pq.read_table(lost).num_rows
    lost.unlink()
    assert [r.total for r in again.logprobs(requests, adapter=adapter)] == [r.total for r in remote]
    assert (again.jobs[-1].computed, again.jobs[-1].reused) == (lost_rows, 6 - lost_rows)


class FakeVLLMStage:
    """What ray.data.llm's vLLM engine stage does to a row (stages/vllm_engine_stage.py): reads tokenized_prompt,
    sampling_params and `model` (a LoRA when it differs from the model source, found under
    dynamic_lora_loading_path), carries the other columns, and adds vLLMOutputData's fields. It "generates"
    tokens named after the seed and scores every prompt token -0.25."""

    def __init__(self, model_source, lora_root):
        self.model_source, self.lora_root = model_source, lora_root

    def __call__(self, row):
        row = dict(row)
        ids, params = list(row.pop("tokenized_prompt")), row.pop("sampling_params")
        lora = row.pop("model", None)
        lora_path = None if lora in (None, self.model_source) else (f"{self.lora_root}/{lora}" if self.lora_root else lora)
        if params.get("prompt_logprobs"):
            logprobs = [None] + [{t: {"logprob": -0.25, "rank": 1, "decoded_token": "x"}} for t in ids[1:]]
            tokens, text = [0], ""
        else:
            logprobs = None
            tokens = [int(params["seed"] or 0) % 50 + k for k in range(params["max_tokens"])]
            text = f"seed {params['seed']} lora {lora_path}"
        return {**row, "prompt": "", "prompt_token_ids": ids, "num_input_tokens": len(ids), "generated_tokens": tokens,
                "generated_text": text, "num_generated_tokens": len(tokens), "prompt_logprobs": logprobs}


@pytest.mark.slow
def test_the_vllm_path_runs_its_rows_through_the_processor_interface(local_ray, engine, tmp_path, monkeypatch):
    import ray.data.llm

    def fake_build_processor(config, preprocess, postprocess):
        stage = FakeVLLMStage(config.model_source, config.dynamic_lora_loading_path)
        return lambda ds: ds.map(preprocess).map(stage).map(postprocess)

    monkeypatch.setattr(ray.data.llm, "build_processor", fake_build_processor)
    store = Storage(tmp_path)
    model = str(tiny_model_dir())
    vllm = RayEngine(model, "vllm", VLLM_SETTINGS, ray_settings(actors=1), store, str(tmp_path / "rows"), batch_size=4)
    prompts = chats(2)
    outs = vllm.generate(prompts, SAMPLED, adapter="/ckpt/M1")
    for prompt, out in zip(prompts, outs):
        ids = engine.tokenizer(engine.render_chat(prompt), add_special_tokens=False)["input_ids"]
        seeds = [sequence_seed(5, ids, j) & 0x7FFF_FFFF for j in range(3)]
        assert [c.text for c in out.completions] == [f"seed {s} lora /ckpt/M1" for s in seeds]
        assert [(c.n_tokens, c.finish_reason) for c in out.completions] == [(12, "length")] * 3
    requests = [(engine.render_chat(p), " The green forest is quiet.") for p in prompts]
    scored = vllm.logprobs(requests)
    counts = [len(encode_pair(engine.tokenizer, c, x)[1]) for c, x in requests]
    assert [(s.total, s.n_tokens) for s in scored] == [(-0.25 * n, n) for n in counts]


@pytest.mark.slow
def test_the_micro_experiment_on_ray_writes_the_local_runs_candidates_and_scores(tmp_path, monkeypatch):
    """`srlm run` of the micro config twice, the local executor and a local Ray on 2 CPUs: the same candidate
    texts and scores; the Ray run's materializations name its jobs and where their rows lie."""
    homes = {}
    for kind in ("local", "ray"):
        directory = tmp_path / kind
        directory.mkdir()
        config, home = write_micro_config(directory)
        data = yaml.safe_load(config.read_text())
        data["executor"] = {"kind": kind, "num_cpus": 2}
        config.write_text(yaml.safe_dump(data))
        env = {k: v for k, v in os.environ.items() if k not in ("SRLM_CONFIG", "SRLM_HOME", "DAGSTER_HOME")}
        proc = subprocess.run([sys.executable, "-m", "srlm.cli", "run", "--config", str(config)],
                              cwd=directory, env=env, capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        homes[kind] = home

    local, ray_run = (_candidates_and_scores(homes[kind]) for kind in ("local", "ray"))
    assert ray_run[0].equals(local[0])  # every candidate, its text, tokens and finish reason
    exact = [c for c in local[1].columns if local[1][c].dtype != pl.Float64]
    assert ray_run[1].select(exact).equals(local[1].select(exact))
    for column in ("length", "likelihood", "consistency", "logp_with_rationale", "logp_without"):
        assert ray_run[1][column].to_list() == pytest.approx(local[1][column].to_list(), abs=1e-5), column
    assert list((homes["ray"] / "shards" / "srlm_iter_1" / "scores").glob("logprobs-*.parquet"))
    assert not (homes["local"] / "shards" / "srlm_iter_1" / "scores").exists()
    monkeypatch.setenv("DAGSTER_HOME", str(homes["ray"] / "dagster"))
    _assert_ray_metadata(homes["ray"])


def _candidates_and_scores(home):
    """Candidates and scores of the micro run's iteration, keyed by example and sample index: the ids that name
    a checkpoint differ between two homes (its adapter_config.json names the base model's path)."""
    candidates = pl.read_parquet(home / "tables" / "srlm_iter_1" / "candidates.parquet")
    scores = pl.read_parquet(home / "tables" / "srlm_iter_1" / "scores.parquet")
    scores = scores.join(candidates.select("candidate_id", "sample_index"), on="candidate_id", how="left")
    return (
        candidates.drop("candidate_id", "checkpoint_id", "run_id").sort("example_id", "sample_index"),
        scores.drop("candidate_id").sort("example_id", "role", "sample_index", nulls_last=True),
    )


def _assert_ray_metadata(home):
    """The candidates' materialization (in the instance $DAGSTER_HOME names) records its Ray jobs."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["srlm_iter_1", "candidates"]))
    meta = event.asset_materialization.metadata
    assert meta["executor"].value == "ray" and meta["ray/job_id"].value
    assert meta["ray/datasets"].value.startswith("srlm-generate")
    assert meta["ray/output"].value.endswith("/rows") and str(home / "shards" / "srlm_iter_1" / "candidates") in meta["ray/output"].value
    assert meta["ray/rows_computed"].value == 6 * 3  # expand.examples x expand.candidates of configs/micro.yaml


# ------------------------------------------------------------------------------------------- on an object store


# `s3` is test_storage's fixture, imported above so that pytest finds it; pyflakes reads the parameter as a redefinition
def test_parts_and_adapters_on_an_object_store(s3, tmp_path, monkeypatch):  # noqa: F811
    """Rows land on the storage as the tables do, and an actor fetches a stored adapter to its node once."""
    from srlm.checkpoints import commit_checkpoint

    output = s3.join("shards", "iter_1", "scores")
    ids = [r["row_id"] for r in scoring_rows([("c", " x")], "r")]
    batch = pa.Table.from_pylist([{"row_id": ids[0], "total": -2.0, "n_tokens": 1}], schema=distributed.SCORING_RESULT)
    distributed.commit_part(batch, s3.record(), output, "logprobs")
    assert set(distributed.read_results(s3, output, "logprobs", set(ids))) == set(ids)
    assert distributed.read_results(s3, output, "logprobs", set(ids))[ids[0]]["total"] == -2.0

    staging = tmp_path / "run-1"
    staging.mkdir()
    (staging / "adapter_config.json").write_text("{}")
    stored = commit_checkpoint(staging, s3, tmp_path / "home", "iter_1", "M1-abc")
    monkeypatch.setattr(distributed.tempfile, "tempdir", str(tmp_path / "node"))
    local = distributed.local_adapter(stored, s3.record())
    assert local == str(tmp_path / "node" / "srlm-ray" / "checkpoints" / "iter_1" / "M1-abc")
    assert (tmp_path / "node" / "srlm-ray" / "checkpoints" / "iter_1" / "M1-abc" / "adapter_config.json").read_text() == "{}"
    assert distributed.local_adapter("/a/local/folder", s3.record()) == "/a/local/folder"
