"""vLLM engine: GPU tests run only where vLLM imports and CUDA is available; one CPU test everywhere."""

import subprocess
import sys

import pytest


def test_importing_the_module_does_not_import_vllm():
    code = (
        "import sys, srlm.engines.vllm_engine as m; "
        "assert 'vllm' not in sys.modules, 'vllm was imported'; "
        "assert m.VLLMEngineSettings('auto', 0.5, 1, 8, False).engine_kwargs()['enable_lora']"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_vllm_gives_an_install_hint(monkeypatch):
    from tiny_model import tiny_model_dir

    import srlm.engines.vllm_engine as m

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"\.\[gpu\]"):
        m.VLLMEngine(tiny_model_dir(), m.VLLMEngineSettings("auto", 0.5, 1, 8, False))


def _gpu_ready() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def engines():
    pytest.importorskip("vllm")
    if not _gpu_ready():
        pytest.skip("needs CUDA")
    from conftest import engine_settings
    from tiny_model import tiny_model_dir

    from srlm.engines.transformers_engine import TransformersEngine
    from srlm.engines.vllm_engine import VLLMEngine, VLLMEngineSettings

    path = tiny_model_dir()
    v = VLLMEngine(path, VLLMEngineSettings(dtype="float32", gpu_memory_utilization=0.3, tensor_parallel_size=1,
                                            lora_rank=16, trust_remote_code=False))
    t = TransformersEngine(path, engine_settings(batch_size=32, device="cuda", dtype="float32"))
    return v, t


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CUDA")
def test_vllm_generate_shapes_seeds_and_greedy(engines):
    from tiny_model import tiny_chats

    from srlm.engines.types import SamplingParams

    v, t = engines
    prompts = [c[:1] for c in tiny_chats(4, seed=3)]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=16, seed=5)
    a, b = v.generate(prompts, params), v.generate(prompts, params)
    assert a == b
    assert [o.prompt_index for o in a] == [0, 1, 2, 3] and all(len(o.completions) == 3 for o in a)
    short = v.generate(prompts, SamplingParams(temperature=0, max_new_tokens=2))
    assert all(c.finish_reason == "length" and c.n_tokens == 2 for o in short for c in o.completions)
    greedy_v = v.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    greedy_t = t.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    same = sum(x.completions[0].text == y.completions[0].text for x, y in zip(greedy_v, greedy_t))
    assert same >= 3  # float32 on both sides: greedy decodes agree (rare near-ties aside)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CUDA")
def test_vllm_logprobs_match_transformers(engines):
    from tiny_model import tiny_chats

    v, t = engines
    requests = [(t.render_chat(c[:1]), c[1]["content"]) for c in tiny_chats(5, seed=4)]
    for a, b in zip(v.logprobs(requests), t.logprobs(requests)):
        assert a.n_tokens == b.n_tokens
        assert a.total == pytest.approx(b.total, abs=1e-2 * max(1, b.n_tokens))


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CUDA")
def test_vllm_adapter(engines):
    from tiny_model import tiny_adapter_dir, tiny_chats

    from srlm.engines.types import SamplingParams

    v, _ = engines
    prompts = [c[:1] for c in tiny_chats(3, seed=3)]
    params = SamplingParams(temperature=0, max_new_tokens=8)
    base = v.generate(prompts, params)
    tuned = v.generate(prompts, params, adapter=str(tiny_adapter_dir()))
    assert [o.completions[0].text for o in tuned] != [o.completions[0].text for o in base]
    assert v.generate(prompts, params) == base


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CUDA")
def test_vllm_context_matches_the_tokenizer_path(engines):
    """Token counts use the model's tokenizer and config (no engine): the same context length as vLLM's."""
    from conftest import generation_resource

    v, _ = engines
    assert generation_resource(backend="vllm").tokenizer(str(v.model_path)).max_length == v.max_length


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_ready(), reason="needs CUDA")
def test_vllm_sleeps_for_training_and_wakes_to_the_same_outputs(engines):
    import torch
    from tiny_model import tiny_adapter_dir, tiny_chats

    from srlm.engines.types import SamplingParams

    v, _ = engines
    prompts = [c[:1] for c in tiny_chats(3, seed=3)]
    params, adapter = SamplingParams(temperature=0, max_new_tokens=8), str(tiny_adapter_dir())
    before = (v.generate(prompts, params), v.generate(prompts, params, adapter=adapter))
    free_awake, total = torch.cuda.mem_get_info()
    assert v.sleep()
    freed = torch.cuda.mem_get_info()[0] - free_awake
    v.wake()
    assert freed > 0.2 * total  # most of the 0.3 share the engine reserved (its KV cache) comes back
    assert (v.generate(prompts, params), v.generate(prompts, params, adapter=adapter)) == before
