"""The GPU handoff between the vLLM engine and the trainer (resources/generation.py), on CPU: a fake `vllm`
module records what the real VLLMEngine asks of vLLM, so the tests check the order of the calls: counting
tokens builds no engine, the engine sleeps before training and wakes after it, and generates again. Also the
LoRA rank vLLM is given."""

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from conftest import generation_resource
from tiny_model import tiny_model_dir

from resources import GenerationResource, ParquetIOManager, TrainingResource, WarehouseResource, build_resources
from srlm.config import ConfigError, load_config, vllm_lora_rank
from srlm.engines.types import SamplingParams
from srlm.engines.vllm_engine import VLLMEngineSettings

GREEDY = SamplingParams(temperature=0, max_new_tokens=4)


# ------------------------------------------------------------------------------------------ LoRA rank


@pytest.mark.parametrize(
    "r, rank", [(1, 1), (2, 8), (8, 8), (12, 16), (33, 64), (64, 64), (200, 256), (300, 320), (321, 512), (512, 512)]
)
def test_the_lora_rank_is_rounded_up_to_one_vllm_accepts(r, rank):
    assert vllm_lora_rank(r) == rank
    assert VLLMEngineSettings("auto", 0.5, 1, r, False).engine_kwargs()["max_lora_rank"] == rank


def test_a_lora_rank_above_512_is_a_config_error_with_vllm_only(micro_config):
    def generation(backend: str, r: int) -> GenerationResource:
        cfg = load_config(micro_config({"generation": {"backend": backend}, "train": {"lora": {"r": r}}}))
        return build_resources(cfg)["generation"]

    assert generation("vllm", 12)._engine_settings().engine_kwargs()["max_lora_rank"] == 16
    with pytest.raises(ConfigError, match=r"LoRA rank 600 \(train.lora.r\) is above 512"):
        generation("vllm", 600)
    assert generation("transformers", 600).lora_rank == 600  # transformers serves any rank


def test_ray_data_llm_gets_the_rounded_rank():
    from srlm import ray_vllm

    processor = ray_vllm.processor_config("/models/m", VLLMEngineSettings("auto", 0.5, 1, 12, False), 4, 1, None)
    assert processor.engine_kwargs["max_lora_rank"] == 16


# ------------------------------------------------------------------------------------------ a fake vLLM


class FakeLLM:
    """vllm.LLM as VLLMEngine uses it; every call lands in the shared `events` list."""

    events: list[str] = []

    def __init__(self, **kwargs):
        self.kwargs, self.asleep = kwargs, False
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=128))
        self.events.append("build")

    def generate(self, prompts, params, use_tqdm=True, lora_request=None):
        assert not self.asleep, "a sleeping engine was asked to generate"
        self.events.append("generate")
        sample = SimpleNamespace(index=0, text="ok", token_ids=[5], finish_reason="stop")
        return [SimpleNamespace(outputs=[sample]) for _ in prompts]

    def sleep(self, level=1):
        self.asleep = True
        self.events.append(f"sleep(level={level})")

    def wake_up(self, tags=None):
        self.asleep = False
        self.events.append("wake_up")


def install_fake_vllm(monkeypatch, sleep_mode: bool) -> list[str]:
    """Put a fake `vllm` (and the submodules VLLMEngine imports) in sys.modules; returns the events list."""
    modules = {name: types.ModuleType(name) for name in ("vllm", "vllm.inputs", "vllm.platforms")}
    modules["vllm"].LLM = FakeLLM
    modules["vllm"].SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    modules["vllm.inputs"].TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    modules["vllm.platforms"].current_platform = SimpleNamespace(is_sleep_mode_available=lambda: sleep_mode)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(FakeLLM, "events", [])
    monkeypatch.setattr(GenerationResource, "_engines", {})  # no engine cached by another test
    return FakeLLM.events


@pytest.fixture
def events(monkeypatch):
    return install_fake_vllm(monkeypatch, sleep_mode=True)


def test_counting_tokens_builds_no_engine_and_training_runs_while_it_sleeps(events):
    generation, path = generation_resource(backend="vllm", lora_rank=12), str(tiny_model_dir())
    tokenizer = generation.tokenizer(path)
    assert tokenizer.count_tokens(["two words"])[0] > 0
    assert "hi" in tokenizer.render_chat([{"role": "user", "content": "hi"}])
    assert generation.context_length(path) == tokenizer.max_length
    assert events == []  # neither counting tokens nor checking the base model built an engine

    engine = generation.engine(path)
    engine.generate(["a prompt"], GREEDY)
    with generation.released():
        events.append("train")
    [out] = generation.engine(path).generate(["a prompt"], GREEDY)

    assert events == ["build", "generate", "sleep(level=1)", "train", "wake_up", "generate"]
    assert out.completions[0].text == "ok" and generation.engine(path) is engine
    assert engine.llm.kwargs["enable_sleep_mode"] and engine.llm.kwargs["max_lora_rank"] == 16


def test_the_engine_wakes_when_training_fails(events):
    generation = generation_resource(backend="vllm")
    generation.engine(str(tiny_model_dir()))
    with pytest.raises(RuntimeError, match="out of memory"), generation.released():
        raise RuntimeError("out of memory")
    assert events == ["build", "sleep(level=1)", "wake_up"]


def test_without_sleep_mode_the_engine_is_dropped_and_rebuilt(monkeypatch):
    events = install_fake_vllm(monkeypatch, sleep_mode=False)
    generation, path = generation_resource(backend="vllm"), str(tiny_model_dir())
    engine = generation.engine(path)
    assert engine.llm.kwargs["enable_sleep_mode"] is False  # vLLM refuses sleep mode where the platform lacks it
    with generation.released():
        events.append("train")
    assert generation.engine(path) is not engine
    assert events == ["build", "train", "build"]


# ------------------------------------------------------------------------------------------ in the asset graph


def test_the_checkpoint_asset_trains_while_the_engine_sleeps(events, micro_config, tmp_path):
    """The real D0 and sft assets on a stub base model: the data steps count tokens without an engine; then,
    with an engine built (as candidates or evaluation build one), the sft checkpoint trains (a recording
    trainer) while it sleeps."""
    from assets import build_assets
    from assets.data import BASE_MODEL
    from assets.tables import frame
    from srlm import schemas
    from srlm.training import TrainReport

    cfg = load_config(micro_config({"generation": {"backend": "vllm"}}))
    path = str(tiny_model_dir())

    @dg.asset(key=BASE_MODEL)
    def base():
        columns = {**schemas.CHECKPOINTS, **schemas.BASE_MODEL_EXTRA}
        return frame([{c: {"checkpoint_id": "base-tiny", "path": path}.get(c) for c in columns}], columns)

    class RecordingTraining(TrainingResource):
        def train(self, base_model, examples, out_dir, settings, seed, **kwargs):
            events.append("train")
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "adapter_config.json").write_text("{}")
            return TrainReport(steps=1, loss_curve=[1.0], final_loss=1.0)

    checkpoint = dg.AssetKey(["sft", "checkpoint"])
    wanted = {dg.AssetKey(["data", "instructions"]), dg.AssetKey(["sft", "training_examples"]), checkpoint}
    graph = [base, *(a for a in build_assets(cfg) if set(a.keys) & wanted)]
    generation, home = generation_resource(backend="vllm"), str(tmp_path / "home")
    resources = {"generation": generation, "training": RecordingTraining(device="cpu", dtype="auto"), "io_manager": ParquetIOManager(home=home),
                 "warehouse": WarehouseResource(home=home)}

    def materialize(selection):
        return dg.materialize(graph, selection=selection, resources=resources, instance=dg.DagsterInstance.ephemeral())

    assert materialize(dg.AssetSelection.all() - dg.AssetSelection.assets(checkpoint)).success
    assert events == []
    generation.engine(path)
    assert materialize([checkpoint]).success
    assert events == ["build", "sleep(level=1)", "train", "wake_up"]
