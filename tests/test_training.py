import json

import pytest
import torch
from peft import PeftModel
from tiny_model import tiny_chats, tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from srlm.training import (
    IGNORE_INDEX,
    LoraSettings,
    TrainSettings,
    collate,
    encode_example,
    length_grouped_batches,
    train_lora,
)

FAST = dict(batch_size=8, device="cpu", dtype="float32", learning_rate=1e-2)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(tiny_model_dir()))


@pytest.fixture(scope="module")
def examples(tokenizer):
    return [
        (tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True), chat[1]["content"])
        for chat in tiny_chats(16, seed=2)
    ]


def test_prompt_tokens_are_masked(tokenizer, examples):
    prompt, completion = examples[0]
    enc = encode_example(tokenizer, prompt, completion, max_length=512)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    n_completion = len(tokenizer(completion, add_special_tokens=False)["input_ids"])
    assert not enc.truncated
    assert len(enc.input_ids) == n_prompt + n_completion + 1
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert enc.input_ids[-1] == tokenizer.eos_token_id
    batch = collate([enc, encode_example(tokenizer, "x", "y", 512)], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == IGNORE_INDEX).all()  # right padding is ignored


def test_long_examples_lose_prompt_from_the_left(tokenizer):
    prompt = " ".join(f"w{i}" for i in range(200))
    enc = encode_example(tokenizer, prompt, "The end.", max_length=32)
    assert enc.truncated and len(enc.input_ids) == 32
    completion = tokenizer("The end.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert enc.input_ids[-len(completion) :] == completion
    assert enc.labels.count(IGNORE_INDEX) == 32 - len(completion)
    tail = tokenizer(prompt, add_special_tokens=False)["input_ids"][-(32 - len(completion)) :]
    assert enc.input_ids[: len(tail)] == tail
    huge = encode_example(tokenizer, "p", "word " * 100, max_length=16)
    assert huge.truncated and len(huge.input_ids) == 16 and huge.labels[0] == IGNORE_INDEX


def test_length_grouped_batches_cover_every_example_once():
    import random

    lengths = [5, 50, 7, 48, 6, 49, 8, 4, 3]
    batches = length_grouped_batches(lengths, 3, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert batches == length_grouped_batches(lengths, 3, random.Random(0))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) < 10 for b in batches)


def test_loss_decreases_and_adapter_loads(tmp_path, examples):
    repeated = [(prompt, "The green forest is quiet.") for prompt, _ in examples]  # one answer to learn
    out = tmp_path / "adapter"
    logs = []
    report = train_lora(
        tiny_model_dir(), repeated, out, LoraSettings(r=8, alpha=16, dropout=0.0),
        TrainSettings(epochs=6, log_every=2, **FAST), log=logs.append,
    )
    assert report.steps == 12 and len(report.loss_curve) == 12
    assert sum(report.loss_curve[-3:]) / 3 < 0.7 * report.loss_curve[0]
    assert report.final_loss == pytest.approx(sum(report.loss_curve[-10:]) / 10)
    assert report.completion_tokens > 0 and report.truncated == 0 and report.adapter_dir == str(out)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "training_report.json").read_text())["steps"] == 12
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert any("step 12/12" in line for line in logs)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir()))
    model = PeftModel.from_pretrained(base, str(out))
    assert model.peft_config["default"].r == 8
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert not torch.allclose(tuned, plain)


def test_continue_from_adapter(tmp_path, examples):
    first = train_lora(tiny_model_dir(), examples, tmp_path / "a", LoraSettings(r=4, dropout=0.0),
                       TrainSettings(max_steps=6, **FAST))
    second = train_lora(tiny_model_dir(), examples, tmp_path / "b", LoraSettings(r=16),
                        TrainSettings(max_steps=6, **FAST), init_adapter=str(tmp_path / "a"))
    # continuing starts from the first adapter's loss level, and keeps its settings (r=4)
    assert second.loss_curve[0] < first.loss_curve[0]
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["r"] == 4
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_training_is_seeded(tmp_path, examples):
    runs = [
        train_lora(tiny_model_dir(), examples, tmp_path / str(i), LoraSettings(), TrainSettings(max_steps=3, **FAST))
        for i in range(2)
    ]
    assert runs[0].loss_curve == runs[1].loss_curve
