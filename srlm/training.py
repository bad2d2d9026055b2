"""LoRA fine-tuning with peft and accelerate: (rendered prompt, completion) pairs, loss on the completion tokens only.

    report = train_lora("models/base", [(prompt, completion), ...], "ckpt/iter_1",
                        cfg.train.lora, TrainSettings.of(cfg.train, seed=0, device="cpu", dtype="auto"))

- The completion gets the tokenizer's eos appended; prompt tokens (and padding) are not trained.
- An example longer than max_length keeps its completion and loses prompt tokens from the left
  (a completion longer than max_length - 1 is cut on the right); nothing is dropped, truncations are counted.
- Batches: seeded shuffle, then grouped by length (sorted within windows of 50 batches) to cut padding;
  right padding. `batch_size` counts the examples of a micro-batch over all processes together.
- The loss of an optimizer step is the mean over all its completion tokens (every micro-batch, every process).
  AdamW on the LoRA weights, linear warmup then linear decay to zero, gradients clipped to norm 1.0.
- The output layer projects only the positions whose next token is trained (see CompletionLM).
- From the base model with a fresh LoRA, or continuing a previous adapter (`init_adapter`, trainable;
  its own LoRA settings then apply).
- bf16 autocast when the dtype resolves to bfloat16 (CUDA "auto"), fp16 autocast with loss scaling for float16.
  Gradient checkpointing on request (less activation memory; each layer's forward runs again in the backward).
- `processes` = 1 trains in this process; N > 1 runs the same code in N processes under `accelerate launch`
  (srlm.train_launch): DDP (gloo on CPU), or on GPUs FSDP with `fsdp` (use_orig_params off, the LoRA layers
  wrapped on their own as peft's fsdp_auto_wrap_policy does; the adapter is saved from the gathered state dict,
  never merged). Same global batch, same adapter: N processes match one to float rounding.
- Per-step loss, learning rate and gradient norm go to TensorBoard (event files in logging_dir, by default
  runs/<out_dir name> beside out_dir, never inside the adapter), or to wandb / MLflow when report_to names them
  (run name: out_dir's name); the loss curve is in the TrainReport too.
- The adapter is saved in peft format (adapter_config.json + adapter_model.safetensors) atomically: written
  into a temp sibling directory and renamed onto out_dir, so out_dir is always absent or complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from srlm.config import DType, Lora, TrainRun
from srlm.engines.runtime import atomic_output_dir, load_causal_lm, resolve_device, resolve_dtype

IGNORE_INDEX = -100
_GROUP_WINDOW = 50  # batches per length-sorting window


class TrainSettings(TrainRun):
    """One training run: the `train` keys it takes (types and bounds in srlm.config.TrainRun), the experiment's
    seed, the model's device and dtype, and what only the code sets (max_steps, log_every, logging_dir)."""

    seed: int
    device: str
    dtype: DType
    max_steps: Optional[int] = None  # optimizer steps; None = from epochs
    log_every: int = 10  # steps between log lines
    logging_dir: Optional[str] = None  # this run's TensorBoard folder; None: runs/<out_dir name> beside out_dir

    @classmethod
    def of(cls, train: TrainRun, seed: int, device: str, dtype: str, **code_only) -> "TrainSettings":
        """The settings of a run with the `train` section's keys (its `init` and `lora` are not the run's)."""
        return cls(**train.model_dump(include=set(TrainRun.model_fields)), seed=seed, device=device, dtype=dtype, **code_only)


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


def micro_batches(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """The endless stream of (global) micro-batches, epoch after epoch, each epoch seeded on its own."""
    epoch = 0
    while True:
        yield from length_grouped_batches(lengths, batch_size, random.Random(f"{seed}:{epoch}"))
        epoch += 1


def process_share(batch: Sequence[int], rank: int, processes: int) -> list[int]:
    """The contiguous part of a micro-batch that process `rank` computes (sizes differ by at most one)."""
    return list(batch[len(batch) * rank // processes : len(batch) * (rank + 1) // processes])


def plan_steps(n_examples: int, settings: TrainSettings) -> tuple[int, int]:
    """(optimizer steps, warmup steps)."""
    if settings.max_steps is not None:
        total = max(int(settings.max_steps), 1)
    else:
        per_epoch = math.ceil(n_examples / settings.batch_size)
        total = max(math.ceil(settings.epochs * per_epoch / settings.grad_accum), 1)
    return total, math.ceil(settings.warmup_ratio * total)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(total - warmup, 1))


class CompletionLM(torch.nn.Module):
    """A causal LM whose forward returns the summed NLL of the trained (completion) tokens.

    The loss lives inside the forward so that DDP and FSDP wrap all of it. The output layer projects only the
    positions whose next token is trained: a forward pre-hook hands it those hidden states instead of all of
    them, so the vocabulary projection (49k-way for SmolLM2) and the softmax skip prompt and padding positions:
    6% of a SmolLM2 step on CPU with 18% of the positions untrained, 10% with half. Whatever the model's forward
    does to the logits afterwards still applies.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self._keep: torch.Tensor | None = None  # (batch, length - 1): position t predicts a trained token t + 1
        model.get_output_embeddings().register_forward_pre_hook(self._trained_positions)

    def _trained_positions(self, _module, args):
        return (args[0][:, :-1][self._keep],)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels[:, 1:]
        self._keep = targets != IGNORE_INDEX
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits.float(), targets[self._keep], reduction="sum")


def check_settings(settings: TrainSettings) -> None:
    """Reject settings that cannot run on this machine, before any model is loaded or process started (the
    schema has checked each value on its own)."""
    if settings.fsdp and settings.processes < 2:
        raise ValueError("fsdp shards the model over processes: it needs processes >= 2")
    if settings.fsdp and resolve_device(settings.device).type == "cpu":
        raise ValueError("fsdp needs GPUs (accelerate runs FSDP on accelerators only); on CPU use DDP (fsdp off)")
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    for name in settings.report_to:
        if not available[name]():
            raise ValueError(f"report_to: {name!r} needs the {name} package (pip install {name})")


@dataclass(frozen=True)
class TrainJob:
    """One training run's inputs, as train_lora received them: run in this process, or written to a spec file
    for each process `accelerate launch` starts (srlm/train_launch.py)."""

    base_model_path: str
    examples: list[tuple[str, str]]  # (rendered prompt, completion)
    out_dir: str
    lora: Lora
    settings: TrainSettings
    init_adapter: str | None

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "lora": self.lora.model_dump(), "settings": self.settings.model_dump()})

    @classmethod
    def from_json(cls, text: str) -> "TrainJob":
        spec = json.loads(text)
        return cls(**{**spec, "examples": [tuple(e) for e in spec["examples"]], "lora": Lora(**spec["lora"]),
                      "settings": TrainSettings(**spec["settings"])})


def train_lora(
    base_model_path: str | Path,
    examples: Sequence[tuple[str, str]],
    out_dir: str | Path,
    lora: Lora,
    settings: TrainSettings,
    init_adapter: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainReport:
    """Fine-tune a LoRA adapter on (rendered prompt, completion) pairs and save it to out_dir."""
    log = log or (lambda _msg: None)
    if not examples:
        raise ValueError("train_lora needs at least one example")
    check_settings(settings)
    job = TrainJob(str(base_model_path), [tuple(e) for e in examples], str(out_dir), lora, settings,
                   None if init_adapter is None else str(init_adapter))
    if settings.processes > 1:
        from srlm.train_launch import launch

        return launch(job, log)
    return run_training(job, log)


def run_training(job: TrainJob, log: Callable[[str], None]) -> TrainReport:
    """One process's part of a training run: the whole run in-process, or one of `accelerate launch`'s processes."""
    started = time.perf_counter()
    settings, lora, out_dir = job.settings, job.lora, job.out_dir
    accelerator = _accelerator(settings, Path(out_dir))
    say = log if accelerator.is_main_process else (lambda _msg: None)
    torch.manual_seed(settings.seed)
    model, tokenizer = _lora_model(job.base_model_path, lora, settings, job.init_adapter, accelerator, say)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before FSDP flattens them
    encoded = [encode_example(tokenizer, p, c, settings.max_length) for p, c in job.examples]
    truncated = sum(e.truncated for e in encoded)
    if truncated:
        say(f"train: {truncated} of {len(encoded)} examples longer than {settings.max_length} tokens were cut (prompt from the left)")
    net = accelerator.prepare(CompletionLM(model))
    trainable = [p for p in net.parameters() if p.requires_grad]  # after prepare: FSDP's flat parameters
    optimizer = accelerator.prepare(torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0))
    accelerator.init_trackers(Path(out_dir).name, config=_hyperparameters(lora, settings, len(encoded)))
    total, _ = plan_steps(len(encoded), settings)
    say(
        f"train: {len(encoded)} examples, {total} steps of {settings.batch_size}x{settings.grad_accum} on "
        f"{accelerator.num_processes} process(es){_distribution(accelerator)}, "
        f"{n_trainable:,} trainable parameters, "
        f"{accelerator.device}{'' if accelerator.mixed_precision == 'no' else f' {accelerator.mixed_precision} autocast'}"
        f"{', gradient checkpointing' if settings.gradient_checkpointing else ''}"
    )
    try:
        loss_curve, completion_tokens = _optimize(accelerator, net, optimizer, encoded, tokenizer.pad_token_id, settings, say, started)
        report = TrainReport(
            steps=total,
            loss_curve=loss_curve,
            final_loss=sum(loss_curve[-10:]) / len(loss_curve[-10:]),
            completion_tokens=completion_tokens,
            adapter_dir=str(out_dir),
            truncated=truncated,
        )
        _save(accelerator, net, out_dir, report, started)
    finally:
        accelerator.end_training()  # closes the trackers' files, and a launched run's process group
    say(f"train: adapter saved to {out_dir} (final loss {report.final_loss:.4f}, {report.seconds:.0f}s)")
    return report


def _accelerator(settings: TrainSettings, out_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    dev = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, dev)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one state per process and refuses to change it; like transformers' TrainingArguments,
        # start every in-process run afresh, so consecutive runs may differ in device or precision
        AcceleratorState._reset_state(reset_partial_state=True)
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)
    return Accelerator(
        cpu=dev.type == "cpu",
        mixed_precision={torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no"),
        fsdp_plugin=_fsdp_plugin() if settings.fsdp else None,
        log_with=_trackers(settings, out_dir) or None,
    )


def _fsdp_plugin():
    from accelerate import FullyShardedDataParallelPlugin

    # a FlatParameter must not mix frozen and trained weights: with use_orig_params off, the LoRA layers get
    # FSDP units of their own (auto_wrap_policy, set in _lora_model once the model exists)
    return FullyShardedDataParallelPlugin(
        fsdp_version=1, use_orig_params=False, state_dict_type="FULL_STATE_DICT", sync_module_states=True
    )


def _trackers(settings: TrainSettings, out_dir: Path) -> list:
    """accelerate trackers for report_to; each names the run after the adapter directory."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    logging_dir = Path(settings.logging_dir) if settings.logging_dir else out_dir.parent / "runs" / out_dir.name
    make = {
        "tensorboard": lambda: TensorBoardTracker(logging_dir.name, str(logging_dir.parent)),  # it joins them again
        "wandb": lambda: WandBTracker(os.environ.get("WANDB_PROJECT", "srlm"), name=out_dir.name),
        "mlflow": lambda: MLflowTracker(experiment_name="srlm", run_name=out_dir.name),
    }
    return [make[name]() for name in settings.report_to]


def _hyperparameters(lora: Lora, settings: TrainSettings, n_examples: int) -> dict:
    values = {f"lora_{k}": v for k, v in lora.model_dump().items()} | settings.model_dump() | {"examples": n_examples}
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}


def _lora_model(base_model_path, lora: Lora, settings: TrainSettings, init_adapter, accelerator, log):
    """(peft model in train mode, tokenizer): a fresh LoRA on the base model, or the previous adapter, trainable."""
    from peft import LoraConfig, PeftModel, get_peft_model

    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)  # launched CPU processes: "cpu:0"
    model, tokenizer = load_causal_lm(base_model_path, device=device, dtype=settings.dtype, padding_side="right")
    if settings.gradient_checkpointing:
        # non-reentrant: needs no input that requires grad (the embeddings are frozen), and works under DDP/FSDP
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
    if settings.fsdp:
        from peft.utils.other import fsdp_auto_wrap_policy

        accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    model.train()
    return model, tokenizer


def _optimize(accelerator, net, optimizer, encoded, pad_id, settings: TrainSettings, log, started) -> tuple[list[float], int]:
    """The optimizer steps; returns (loss per step, completion tokens trained on)."""
    total, warmup = plan_steps(len(encoded), settings)
    targets = [sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in encoded]
    stream = micro_batches([len(e.input_ids) for e in encoded], settings.batch_size, settings.seed)
    loss_curve: list[float] = []
    completion_tokens = 0
    for step in range(total):
        lr = settings.learning_rate * _lr_factor(step, total, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [next(stream) for _ in range(settings.grad_accum)]
        step_tokens = sum(targets[i] for batch in batches for i in batch)
        shares = [process_share(b, accelerator.process_index, accelerator.num_processes) for b in batches]
        nll = _forward_backward(accelerator, net, [[encoded[i] for i in s] for s in shares], pad_id, step_tokens)
        grad_norm = accelerator.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = accelerator.reduce(nll, "sum").item() / max(step_tokens, 1)
        loss_curve.append(step_loss)
        completion_tokens += step_tokens
        accelerator.log({"train/loss": step_loss, "train/learning_rate": lr, "train/grad_norm": float(grad_norm)}, step=step + 1)
        if (step + 1) % max(settings.log_every, 1) == 0 or step + 1 == total:
            log(f"train: step {step + 1}/{total} loss {step_loss:.4f} ({time.perf_counter() - started:.0f}s)")
    return loss_curve, completion_tokens


def _distribution(accelerator) -> str:
    """How the processes share the work, for the log ("" for one process: accelerate calls that "NO")."""
    kind = accelerator.distributed_type.value
    return "" if kind == "NO" else f" ({kind})"


def _forward_backward(accelerator, net, shares: list[list[EncodedExample]], pad_id: int, step_tokens: int) -> torch.Tensor:
    """Gradients of this process's shares of one step's micro-batches; returns their summed NLL (detached).

    Each share's NLL is divided by the step's completion tokens over all processes and multiplied by the number of
    processes, which DDP and FSDP divide by again when they average the gradients: the step's gradient is that of
    the mean over all its completion tokens. Gradients are synchronised after the last micro-batch only.
    """
    scale = accelerator.num_processes / max(step_tokens, 1)
    total = torch.zeros((), device=accelerator.device)
    for k, rows in enumerate(shares):
        # a process whose share is empty (a batch smaller than the process count) still joins the gradient sync
        rows = rows or [EncodedExample(input_ids=[pad_id], labels=[IGNORE_INDEX], truncated=False)]
        batch = {key: value.to(accelerator.device) for key, value in collate(rows, pad_id).items()}
        with contextlib.nullcontext() if k == len(shares) - 1 else accelerator.no_sync(net):
            nll = net(**batch)
            accelerator.backward(nll * scale)
        total += nll.detach()
    return total


def _save(accelerator, net, out_dir, report: TrainReport, started: float) -> None:
    """Write the adapter and training_report.json atomically; every process must call this (FSDP gathers).
    The report in the folder leaves out the seconds and the folder's own path: the checkpoint id is a hash of
    the folder, and the same training must give the same id."""
    state = accelerator.get_state_dict(net)  # the full (unsharded) weights, on the main process
    if accelerator.is_main_process:
        peft_model = accelerator.unwrap_model(net).model
        with atomic_output_dir(out_dir) as tmp:
            peft_model.save_pretrained(str(tmp), state_dict={k.removeprefix("model."): v for k, v in state.items()})
            report.seconds = time.perf_counter() - started
            stable = {k: v for k, v in asdict(report).items() if k not in ("seconds", "adapter_dir")}
            (tmp / "training_report.json").write_text(json.dumps(stable, indent=1))
    accelerator.wait_for_everyone()
