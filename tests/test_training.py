import json
import random
import sys

import pytest
import torch
from conftest import lora, train_settings
from peft import PeftModel
from pydantic import ValidationError
from safetensors.torch import load_file
from tiny_model import tiny_chats, tiny_model_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from srlm.engines.runtime import ModelLoadError
from srlm.training import (
    IGNORE_INDEX,
    check_settings,
    collate,
    encode_example,
    length_grouped_batches,
    micro_batches,
    process_share,
    train_lora,
)

FAST = dict(batch_size=8, learning_rate=1e-2)  # on conftest.train_settings' CPU in float32


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
    lengths = [5, 50, 7, 48, 6, 49, 8, 4, 3]
    batches = length_grouped_batches(lengths, 3, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert batches == length_grouped_batches(lengths, 3, random.Random(0))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) < 10 for b in batches)
    stream = micro_batches(lengths, 4, seed=1)
    two_epochs = [next(stream) for _ in range(6)]  # 3 batches (4, 4, 1) per epoch, each epoch reshuffled
    assert sorted(i for b in two_epochs[:3] for i in b) == sorted(i for b in two_epochs[3:] for i in b) == list(range(9))
    assert two_epochs[:3] != two_epochs[3:]


def test_process_shares_split_a_batch_contiguously():
    batch = [7, 3, 9, 1, 4]
    assert [process_share(batch, r, 2) for r in range(2)] == [[7, 3], [9, 1, 4]]
    assert [process_share(batch, r, 1) for r in range(1)] == [batch]
    assert [process_share([5], r, 2) for r in range(2)] == [[], [5]]  # the empty share trains a masked pad row


def test_settings_that_cannot_run_are_rejected(monkeypatch):
    import accelerate.utils

    with pytest.raises(ValueError, match="processes >= 2"):
        check_settings(train_settings(fsdp=True, device="cuda"))
    with pytest.raises(ValueError, match="fsdp needs GPUs"):
        check_settings(train_settings(fsdp=True, processes=2, device="cpu"))
    with pytest.raises(ValidationError, match="report_to.0"):  # the schema's values, before any check
        train_settings(report_to=["tensorbored"])
    with pytest.raises(ValidationError, match="processes"):
        train_settings(processes=0)
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ValueError, match=r"'wandb' needs the wandb package \(pip install wandb\)"):
        check_settings(train_settings(report_to=["wandb"]))
    check_settings(train_settings(report_to=[], processes=2, device="cpu"))


def test_loss_decreases_adapter_loads_and_tensorboard_logs_beside_it(tmp_path, examples):
    repeated = [(prompt, "The green forest is quiet.") for prompt, _ in examples]  # one answer to learn
    out = tmp_path / "adapter"
    logs = []
    report = train_lora(
        tiny_model_dir(), repeated, out, lora(r=8, alpha=16, dropout=0.0),
        train_settings(epochs=6, log_every=2, **FAST), log=logs.append,
    )
    assert report.steps == 12 and len(report.loss_curve) == 12
    assert sum(report.loss_curve[-3:]) / 3 < 0.7 * report.loss_curve[0]
    assert report.final_loss == pytest.approx(sum(report.loss_curve[-10:]) / 10)
    assert report.completion_tokens > 0 and report.truncated == 0 and report.adapter_dir == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "training_report.json"]
    assert json.loads((out / "training_report.json").read_text())["steps"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "runs"]  # no temp sibling left behind
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "adapter"))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == list(range(1, 13))
    assert [e.value for e in logged] == pytest.approx(report.loss_curve, rel=1e-6)
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


def _completion_nll(model, encoded) -> torch.Tensor:
    """Mean NLL of the trained tokens, one unpadded example at a time, from the model's full logits."""
    nll, n = torch.zeros(()), 0
    for e in encoded:
        targets = torch.tensor(e.labels[1:])
        keep = targets != IGNORE_INDEX
        logp = model(torch.tensor([e.input_ids])).logits[0, :-1].log_softmax(-1)
        nll = nll - logp[keep].gather(1, targets[keep][:, None]).sum()
        n += int(keep.sum())
    return nll / n


def test_first_step_matches_a_hand_computed_loss_and_gradient(tmp_path, tokenizer, examples):
    # one batch holds all 16 examples (some cut to 40 tokens); a fresh LoRA starts as the identity (B = 0), so
    # step 1's loss is the base model's mean NLL over completion + eos tokens, and AdamW's first step moves each
    # B entry by -lr * g / (|g| + eps), g its gradient of that loss (A's gradient is 0 while B = 0)
    lr = 1e-2
    settings = train_settings(max_steps=1, batch_size=16, max_length=40, learning_rate=lr, report_to=[])
    report = train_lora(tiny_model_dir(), examples, tmp_path / "a", lora(r=4, dropout=0.0), settings)
    encoded = [encode_example(tokenizer, p, c, 40) for p, c in examples]
    assert report.truncated == sum(e.truncated for e in encoded) > 0
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir())), str(tmp_path / "a"), is_trainable=True)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.zero_()
    loss = _completion_nll(model, encoded)
    assert report.loss_curve[0] == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            g = p.grad[p.grad.abs() > 1e-6]  # smaller ones may differ in sign between batched and unbatched sums
            assert g.numel() > 0.9 * p.numel()
            assert torch.allclose(trained[name][p.grad.abs() > 1e-6], -lr * g / (g.abs() + 1e-8), atol=1e-6)


def test_gradient_checkpointing_recomputes_the_layers_and_keeps_the_loss(tmp_path, examples, monkeypatch):
    from transformers.models.llama import modeling_llama

    calls = []
    forward = modeling_llama.LlamaDecoderLayer.forward
    monkeypatch.setattr(modeling_llama.LlamaDecoderLayer, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    curves, layer_calls = [], []
    for checkpointing in (False, True):
        calls.clear()
        settings = train_settings(max_steps=2, gradient_checkpointing=checkpointing, report_to=[], **FAST)
        curves.append(train_lora(tiny_model_dir(), examples, tmp_path / str(checkpointing), lora(dropout=0.0), settings).loss_curve)
        layer_calls.append(len(calls))
    assert layer_calls[1] == 2 * layer_calls[0]  # each layer's forward runs again in the backward pass
    assert curves[0] == pytest.approx(curves[1], abs=1e-6)


def test_bf16_autocast_trains_close_to_float32(tmp_path, examples):
    curves, logs = {}, []
    for dtype in ("float32", "bfloat16"):
        settings = train_settings(max_steps=3, report_to=[], dtype=dtype, **FAST)
        curves[dtype] = train_lora(tiny_model_dir(), examples, tmp_path / dtype, lora(dropout=0.0), settings, log=logs.append).loss_curve
    assert any("bf16 autocast" in line for line in logs)
    assert curves["bfloat16"] != curves["float32"]
    assert curves["bfloat16"] == pytest.approx(curves["float32"], abs=0.05)
    assert {t.dtype for t in load_file(tmp_path / "bfloat16" / "adapter_model.safetensors").values()} == {torch.float32}


def test_continue_from_adapter(tmp_path, examples):
    first = train_lora(tiny_model_dir(), examples, tmp_path / "a", lora(r=4, dropout=0.0),
                       train_settings(max_steps=6, report_to=[], **FAST))
    second = train_lora(tiny_model_dir(), examples, tmp_path / "b", lora(r=16),
                        train_settings(max_steps=6, report_to=[], **FAST), init_adapter=str(tmp_path / "a"))
    # continuing starts from the first adapter's loss level, and keeps its settings (r=4)
    assert second.loss_curve[0] < first.loss_curve[0]
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["r"] == 4
    a, b = load_file(tmp_path / "a" / "adapter_model.safetensors"), load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_training_is_seeded(tmp_path, examples):
    runs = [
        train_lora(tiny_model_dir(), examples, tmp_path / name, lora(), train_settings(max_steps=3, seed=seed, report_to=[], **FAST))
        for name, seed in (("0", 0), ("1", 0), ("other", 1))
    ]
    assert runs[0].loss_curve == runs[1].loss_curve != runs[2].loss_curve
    weights = [(tmp_path / name / "adapter_model.safetensors").read_bytes() for name in ("0", "1", "other")]
    assert weights[0] == weights[1] != weights[2]


def test_two_processes_train_the_same_adapter_as_one(tmp_path, tokenizer):
    # 17 examples in global batches of 8: per-process shares of 4, and a last batch of 1 that leaves one
    # process an empty share; 6 steps cross into the second epoch
    data = [
        (tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True), chat[1]["content"])
        for chat in tiny_chats(17, seed=3)
    ]
    settings = dict(max_steps=6, batch_size=8, learning_rate=1e-2, report_to=[])
    one = train_lora(tiny_model_dir(), data, tmp_path / "one", lora(dropout=0.0), train_settings(**settings))
    logs = []
    two = train_lora(tiny_model_dir(), data, tmp_path / "two", lora(dropout=0.0),
                     train_settings(processes=2, log_every=3, **settings), log=logs.append)
    assert any("on 2 process(es) (MULTI_CPU)" in line for line in logs) and any("step 6/6" in line for line in logs)
    assert two.steps == 6 and two.completion_tokens == one.completion_tokens
    assert max(abs(a - b) for a, b in zip(one.loss_curve, two.loss_curve)) < 1e-5
    a, b = load_file(tmp_path / "one" / "adapter_model.safetensors"), load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_launch_forwards_progress_and_raises_with_the_process_error():
    from srlm.train_launch import _run

    script = "print('accelerate noise'); print('train: step 1/1 loss 1.0'); print('train-error: process 1: X: boom'); raise SystemExit(3)"
    logs = []
    with pytest.raises(RuntimeError, match=r"exit code 3\):\nprocess 1: X: boom$"):
        _run([sys.executable, "-c", script], logs.append)
    assert logs == ["train: step 1/1 loss 1.0"]


def test_a_launched_process_says_why_it_failed(tmp_path, examples, capsys):
    from srlm.train_launch import main
    from srlm.training import TrainJob

    job = TrainJob(str(tmp_path / "no-model"), examples[:2], str(tmp_path / "out"), lora(), train_settings(processes=2), None)
    (tmp_path / "spec.json").write_text(job.to_json())
    with pytest.raises(ModelLoadError):
        main([str(tmp_path / "spec.json")])
    assert "train-error: process ?: ModelLoadError: model directory" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_training_resource_passes_the_settings(monkeypatch):
    import srlm.training
    from resources.training import TrainingResource
    from srlm.config import Lora, Train

    seen = {}
    monkeypatch.setattr(srlm.training, "train_lora", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))
    train = Train(init="base", epochs=2, learning_rate=1e-3, batch_size=4, grad_accum=2, max_length=64, warmup_ratio=0.1,
                  lora=Lora(r=4, alpha=8, dropout=0.0, target_modules="all-linear"), processes=1, fsdp=False,
                  gradient_checkpointing=True, report_to=["tensorboard", "wandb"])
    resource = TrainingResource(device="cpu", dtype="auto")
    resource.train("base", [("p", "c")], "out", train, seed=3, logging_dir="tb/run")
    lora, settings = seen["args"][3], seen["args"][4]
    assert (lora.r, lora.alpha, settings.grad_accum, settings.seed, settings.device) == (4, 8, 2, 3, "cpu")
    assert settings.report_to == ["tensorboard", "wandb"] and settings.logging_dir == "tb/run"
    assert settings.gradient_checkpointing and not settings.fsdp and settings.processes == 1
