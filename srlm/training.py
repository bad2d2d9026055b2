"""LoRA fine-tuning with peft: (rendered prompt, completion) pairs, loss on the completion tokens only.

    report = train_lora("models/base", [(prompt, completion), ...], "ckpt/iter_1",
                        LoraSettings(r=8), TrainSettings(epochs=2))

- The completion gets the tokenizer's eos appended; prompt tokens (and padding) have label -100.
- An example longer than max_length keeps its completion and loses prompt tokens from the left
  (a completion longer than max_length - 1 is cut on the right); nothing is dropped, truncations are counted.
- Batches: seeded shuffle, then grouped by length (sorted within windows of 50 batches) to cut padding;
  right padding. AdamW on the LoRA weights, linear warmup then linear decay to zero.
- From the base model with a fresh LoRA, or continuing a previous adapter (`init_adapter`, trainable;
  its own LoRA settings then apply).
- bf16 autocast when the dtype resolves to bfloat16 (CUDA "auto"), fp16 autocast with loss scaling for float16.
- The adapter is saved in peft format (adapter_config.json + adapter_model.safetensors) atomically: written
  into a temp sibling directory and renamed onto out_dir, so out_dir is always absent or complete.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import torch

from srlm.engines.runtime import atomic_output_dir, load_causal_lm, resolve_device, resolve_dtype

IGNORE_INDEX = -100
_GROUP_WINDOW = 50  # batches per length-sorting window


@dataclass
class LoraSettings:
    r: int = 8                   # rank
    alpha: int = 16              # scaling numerator (scale = alpha / r)
    dropout: float = 0.05
    target_modules: Union[str, list[str]] = "all-linear"  # peft's "all-linear", or module names


@dataclass
class TrainSettings:
    epochs: float = 1.0          # passes over the examples (fractions allowed); max_steps overrides
    learning_rate: float = 1e-3  # AdamW peak
    batch_size: int = 16         # examples per micro-batch
    grad_accum: int = 1          # micro-batches per optimizer step
    max_length: int = 512        # tokens per example (prompt + completion + eos)
    warmup_ratio: float = 0.05   # of the optimizer steps
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"          # auto (bf16 on a CUDA GPU with bf16, else float32) | float32 | bfloat16 | float16
    max_steps: int | None = None # optimizer steps; None = from epochs
    log_every: int = 10          # steps between log lines


@dataclass
class TrainReport:
    steps: int
    loss_curve: list[float] = field(default_factory=list)  # mean completion-token loss per optimizer step
    final_loss: float = float("nan")  # mean of the last (up to) 10 steps
    completion_tokens: int = 0        # completion tokens the loss was computed on, all steps together
    seconds: float = 0.0
    adapter_dir: str = ""
    truncated: int = 0                # examples cut to max_length


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_example(tokenizer, prompt: str, completion: str, max_length: int) -> EncodedExample:
    """Tokens and labels of one example: prompt labels are IGNORE_INDEX, completion + eos are trained."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to end completions with")
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c = (tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []) + [tokenizer.eos_token_id]
    truncated = len(p) + len(c) > max_length
    if truncated:
        c = c[: max_length - 1] if p else c[:max_length]
        p = p[len(p) - (max_length - len(c)) :] if max_length > len(c) else []
    return EncodedExample(input_ids=p + c, labels=[IGNORE_INDEX] * len(p) + c, truncated=truncated)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        mask[r, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: shuffle, sort by length within windows, then shuffle the batch order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * _GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(total - warmup, 1))


def train_lora(
    base_model_path: str | Path,
    examples: Sequence[tuple[str, str]],
    out_dir: str | Path,
    lora: LoraSettings,
    settings: TrainSettings,
    init_adapter: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainReport:
    """Fine-tune a LoRA adapter on (rendered prompt, completion) pairs and save it to out_dir."""
    from peft import LoraConfig, PeftModel, get_peft_model

    started = time.perf_counter()
    log = log or (lambda _msg: None)
    if not examples:
        raise ValueError("train_lora needs at least one example")
    if settings.batch_size < 1 or settings.grad_accum < 1:
        raise ValueError("batch_size and grad_accum must be >= 1")
    dev = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, dev)
    torch.manual_seed(settings.seed)
    model, tokenizer = load_causal_lm(base_model_path, device=str(dev), dtype=settings.dtype, padding_side="right")

    encoded = [encode_example(tokenizer, p, c, settings.max_length) for p, c in examples]
    truncated = sum(e.truncated for e in encoded)
    if truncated:
        log(f"train: {truncated} of {len(encoded)} examples longer than {settings.max_length} tokens were cut (prompt from the left)")

    if init_adapter:
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        log(f"train: continuing adapter {init_adapter} (its own LoRA settings apply)")
    else:
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)

    per_epoch = math.ceil(len(encoded) / settings.batch_size)
    if settings.max_steps is not None:
        total_steps = max(int(settings.max_steps), 1)
    else:
        total_steps = max(math.ceil(settings.epochs * per_epoch / settings.grad_accum), 1)
    warmup = math.ceil(settings.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    amp_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else None
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype is torch.float16 else None
    log(
        f"train: {len(encoded)} examples, {total_steps} steps of {settings.batch_size}x{settings.grad_accum}, "
        f"{n_trainable:,} trainable parameters, {dev}{f' autocast {amp_dtype}' if amp_dtype else ''}"
    )

    lengths = [len(e.input_ids) for e in encoded]

    def micro_batches():
        epoch = 0
        while True:
            yield from length_grouped_batches(lengths, settings.batch_size, random.Random(f"{settings.seed}:{epoch}"))
            epoch += 1

    stream = micro_batches()
    pad_id = tokenizer.pad_token_id
    loss_curve: list[float] = []
    completion_tokens = 0
    for step in range(total_steps):
        for group in optimizer.param_groups:
            group["lr"] = settings.learning_rate * _lr_factor(step, total_steps, warmup)
        batches = [collate([encoded[i] for i in next(stream)], pad_id) for _ in range(settings.grad_accum)]
        step_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        step_loss = 0.0
        for batch in batches:
            batch = {k: v.to(dev) for k, v in batch.items()}
            with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE_INDEX
            nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
            loss = nll / max(step_tokens, 1)
            (scaler.scale(loss) if scaler else loss).backward()
            step_loss += loss.item()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_curve.append(step_loss)
        completion_tokens += step_tokens
        if (step + 1) % max(settings.log_every, 1) == 0 or step + 1 == total_steps:
            log(f"train: step {step + 1}/{total_steps} loss {step_loss:.4f} ({time.perf_counter() - started:.0f}s)")

    tail = loss_curve[-10:]
    report = TrainReport(
        steps=total_steps,
        loss_curve=loss_curve,
        final_loss=sum(tail) / len(tail),
        completion_tokens=completion_tokens,
        seconds=0.0,
        adapter_dir=str(out_dir),
        truncated=truncated,
    )
    model.eval()
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        report.seconds = time.perf_counter() - started
        (tmp / "training_report.json").write_text(json.dumps(asdict(report), indent=1))
    log(f"train: adapter saved to {out_dir} (final loss {report.final_loss:.4f}, {report.seconds:.0f}s)")
    return report
