import json

import pytest
import torch
from tiny_model import tiny_model_dir
from transformers import BertConfig

from srlm.engines.runtime import (
    ModelLoadError,
    adapter_dir,
    atomic_output_dir,
    load_causal_lm,
    load_tokenizer,
    model_max_length,
    resolve_device,
    resolve_dtype,
)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_causal_lm(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


def test_an_adapter_folder_needs_its_peft_config(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a peft adapter directory"):
        adapter_dir(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert adapter_dir(tmp_path / "." / "") == tmp_path.resolve()


def test_empty_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        load_causal_lm(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_bert_directory_is_not_a_causal_lm(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="'bert'") as err:
        load_causal_lm(tmp_path)
    assert "not a causal language model" in str(err.value) and str(tmp_path) in str(err.value)


def test_remote_code_needs_trust(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_custom_lm",
        "architectures": ["MyCustomForCausalLM"],
        "auto_map": {"AutoConfig": "modeling_custom.MyConfig", "AutoModelForCausalLM": "modeling_custom.MyModel"},
    }))
    with pytest.raises(ModelLoadError, match="trust_remote_code: true") as err:
        load_causal_lm(tmp_path)
    assert "my_custom_lm" in str(err.value)


def test_unknown_model_type_and_bad_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    with pytest.raises(ModelLoadError, match="unknown model_type 'no_such_model'"):
        load_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_causal_lm(tmp_path)


def test_devices_and_dtypes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda:1")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int4", "cpu")


def test_load_tiny_model():
    model, tok = load_causal_lm(tiny_model_dir(), device="cpu")
    assert not model.training
    assert tok.padding_side == "left"
    assert load_tokenizer(tiny_model_dir(), "right").padding_side == "right"
    assert model_max_length(model, tok) == 192


def test_model_max_length_ignores_placeholder_tokenizer_limit():
    class Cfg:
        max_position_embeddings = 4096

    class M:
        config = Cfg()

    class T:
        model_max_length = int(1e30)

    assert model_max_length(M(), T()) == 4096
    T.model_max_length = 512
    assert model_max_length(M(), T()) == 512


def test_atomic_output_dir_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "1"
    with atomic_output_dir(out) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
