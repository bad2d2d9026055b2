import json
import math

import pytest
import torch
from jinja2 import Template
from tiny_model import TINY_SETTINGS, tiny_documents, tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from srlm.bootstrap import CHAT_TEMPLATE, BootstrapSettings, build_model, pretrain, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(tiny_documents(), vocab_size=400)


def test_think_tokens_are_single_and_survive_decoding(tokenizer):
    text = "<think>Ada has 3 apples.</think>\nAda has 3."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<think>" and "</think>" in tokens
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert "<think>" not in tokenizer.all_special_tokens


def test_special_tokens_and_round_trip(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|bos|>", "<|end|>", "<|pad|>")
    assert tokenizer.unk_token == "<|unk|>"
    text = "Describe a quiet river, café naïve 42 % ünïcode ✓."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: any text round-trips
    chat = "<|user|>\nHi<|end|>\n"
    ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[0] == "<|user|>"
    assert ids[-2] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "\nHi\n"


def test_chat_template_renders(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "<think>greet</think>\nHello."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi?<|end|>\n<|assistant|>\n<think>greet</think>\nHello.<|end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nHi?<|end|>\n<|assistant|>\n")
    assert Template(CHAT_TEMPLATE).render(messages=messages[1:2], add_generation_prompt=False) == "<|user|>\nHi?<|end|>\n"


def test_save_and_reload_are_identical(tokenizer, tmp_path):
    settings = BootstrapSettings(**{**TINY_SETTINGS, "vocab_size": 400, "context_length": 128})
    model = build_model(tokenizer, settings).eval()
    assert model.config.vocab_size == len(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(model2, LlamaForCausalLM)
    texts = tiny_documents()[:5] + ["<think>x</think> plain text"]
    assert tok2(texts, add_special_tokens=False)["input_ids"] == tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert tok2.chat_template == tokenizer.chat_template
    assert tok2.model_max_length == 128
    ids = torch.tensor([tokenizer(texts[0], add_special_tokens=False)["input_ids"][:40]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)


def test_pretrain_writes_a_complete_model(tmp_path):
    settings = BootstrapSettings(**{**TINY_SETTINGS, "max_steps": 6})
    lines = []
    out = tmp_path / "model"
    report = pretrain(tiny_documents(), out, settings, device="cpu", log=lines.append)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    assert report.steps == 6 and report.tokens_seen == 6 * settings.batch_size * settings.seq_len
    assert math.isfinite(report.heldout_perplexity) and report.heldout_perplexity > 1
    assert all(math.isfinite(loss) for _, loss in report.loss_curve) and report.loss_curve[-1][0] == 6
    assert report.parameters > 0 and report.vocab_size == json.loads((out / "config.json").read_text())["vocab_size"]
    assert lines and any("perplexity" in line for line in lines)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp leftovers
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)


def test_pretrain_is_deterministic_given_steps(tmp_path):
    settings = BootstrapSettings(**{**TINY_SETTINGS, "max_steps": 4})
    docs = tiny_documents()
    a = pretrain(docs, tmp_path / "a", settings, device="cpu", log=lambda _: None)
    b = pretrain(docs, tmp_path / "b", settings, device="cpu", log=lambda _: None)
    assert a.loss_curve == b.loss_curve
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_interrupted_save_leaves_no_model(tmp_path, monkeypatch):
    def broken_save(self, *args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", broken_save)
    settings = BootstrapSettings(**{**TINY_SETTINGS, "max_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_documents(), tmp_path / "model", settings, device="cpu", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_tiny_model_fixture_loads():
    path = tiny_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
