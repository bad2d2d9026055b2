"""The `bootstrap` base model: a tiny Llama and a byte-level BPE tokenizer, trained from scratch on CPU.

No model hub is reachable where this project is developed and tested, so the default base model is made
here from the instruction text of the offline data kit, in a couple of CPU minutes. It is small and weak
but real: a `LlamaForCausalLM` plus a `PreTrainedTokenizerFast` with a chat template, saved with
`save_pretrained`, so it loads with `AutoModelForCausalLM` / `AutoTokenizer` (and peft, and vLLM) like any
Hugging Face model directory.

    tokenizer = train_tokenizer(texts, vocab_size=4096)
    settings = BootstrapSettings.of(cfg.model.bootstrap, seed=cfg.experiment.seed)
    model = build_model(tokenizer, settings)
    report = pretrain(documents, Path("out/bootstrap"), settings)

Chat format (CHAT_TEMPLATE), one turn per message:

    <|user|>
    {content}<|end|>
    <|assistant|>
    {content}<|end|>

`<|end|>` is the eos token, so generation stops at the end of an assistant turn. `<think>` and `</think>`
are single tokens but not special ones: decoding with skip_special_tokens=True keeps them.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from srlm.config import Pretraining
from srlm.engines.runtime import atomic_output_dir, cpu_has_native_bf16, resolve_device

BOS, EOS, PAD, UNK = "<|bos|>", "<|end|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, UNK, *ROLE_TOKENS)
THINK_TOKENS = ("<think>", "</think>")  # single tokens, kept by decode(skip_special_tokens=True)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


class BootstrapSettings(Pretraining):
    """What pretrain takes: the `model.bootstrap` keys (types and bounds in srlm.config.Pretraining) and the
    experiment's seed, plus the warmup that only the code sets."""

    seed: int
    warmup_steps: int = 50  # linear warmup (at most a quarter of the planned steps), then cosine to 10%

    @classmethod
    def of(cls, section: Pretraining, seed: int) -> "BootstrapSettings":
        """The settings of the `model.bootstrap` section (its corpus gives the documents, not a setting)."""
        return cls(**section.model_dump(include=set(Pretraining.model_fields)), seed=seed)


@dataclass
class BootstrapReport:
    parameters: int
    tokens_seen: int
    steps: int
    seconds: float
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean training loss since last point)
    heldout_perplexity: float = float("nan")
    vocab_size: int = 0


# ------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int, context_length: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts`, with the special tokens and CHAT_TEMPLATE set.

    Special-token strings in the texts are not learned as merges: they are always single tokens.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - len(THINK_TOKENS), 300),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    reserved = (*SPECIAL_TOKENS, *THINK_TOKENS)

    def clean(text: str) -> str:
        for token in reserved:
            text = text.replace(token, "\n")
        return text

    tok.train_from_iterator((clean(t) for t in texts), trainer=trainer, length=len(texts))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=context_length,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# ------------------------------------------------------------------------------------------------ model


def build_model(tokenizer: PreTrainedTokenizerFast, settings: BootstrapSettings) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `settings`, with vocab_size = len(tokenizer) and tied embeddings.
    Also sets tokenizer.model_max_length to settings.context_length, so the pair agrees once saved."""
    tokenizer.model_max_length = settings.context_length
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=settings.context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(settings.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------- pretrain


def pretrain(
    documents: Sequence[str],
    out_dir: Path,
    settings: BootstrapSettings,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> BootstrapReport:
    """Train the tokenizer and the model on `documents`, save both to `out_dir` (atomically).

    Documents (e.g. chats rendered with CHAT_TEMPLATE, or plain text) each end with eos and are packed into
    seq_len chunks; the last `heldout_fraction` of the documents is held out for perplexity. Training runs
    AdamW with linear warmup and cosine decay until `max_seconds` or `max_steps`. The cosine horizon is
    fixed once after a short timing of the first steps, so a run is deterministic given its step count.
    """
    started = time.perf_counter()
    if not documents:
        raise ValueError("pretrain needs at least one document")
    dev = resolve_device(device)
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    corpus = _Corpus.prepare(documents, settings, log)
    model = build_model(corpus.tokenizer, settings).to(dev)
    model.train()
    params = count_parameters(model)
    use_bf16 = _use_bf16(settings.mixed_precision, dev)
    log(
        f"bootstrap: Llama {settings.num_layers}x{settings.hidden_size} ({params / 1e6:.2f}M parameters) on {dev}"
        f"{' with bf16 autocast' if use_bf16 else ''}"
    )
    run = _train(model, corpus.train, settings, dev, use_bf16, log)
    ppl = _perplexity(model, corpus.heldout[:64], settings.batch_size, dev)
    log(f"bootstrap: {run.steps} steps, {run.tokens_seen:,} tokens; held-out perplexity {ppl:.1f}")
    model.eval()
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        corpus.tokenizer.save_pretrained(tmp)
    report = BootstrapReport(
        parameters=params,
        tokens_seen=run.tokens_seen,
        steps=run.steps,
        seconds=time.perf_counter() - started,
        loss_curve=run.loss_curve,
        heldout_perplexity=ppl,
        vocab_size=len(corpus.tokenizer),
    )
    log(f"bootstrap: saved to {out_dir} ({report.seconds:.0f}s in all)")
    return report


@dataclass
class _Corpus:
    """The tokenizer trained on the training documents, and both parts packed into chunks."""

    tokenizer: PreTrainedTokenizerFast
    train: torch.Tensor
    heldout: torch.Tensor

    @classmethod
    def prepare(cls, documents: Sequence[str], settings: BootstrapSettings, log: Callable[[str], None]) -> "_Corpus":
        n_heldout = int(len(documents) * settings.heldout_fraction)
        if len(documents) >= 2:
            n_heldout = max(n_heldout, 1)
        train_docs, heldout_docs = list(documents[: len(documents) - n_heldout]), list(documents[len(documents) - n_heldout :])
        t0 = time.perf_counter()
        tokenizer = train_tokenizer(train_docs, settings.vocab_size, context_length=settings.context_length)
        train = _pack(_encode(tokenizer, train_docs), settings.seq_len)
        heldout_ids = _encode(tokenizer, heldout_docs)
        heldout_tokens = sum(len(ids) for ids in heldout_ids)
        # a small held-out set still measures perplexity, in one shorter chunk
        heldout = _pack(heldout_ids, min(settings.seq_len, max(heldout_tokens - 1, 1)))
        if len(train) == 0:
            raise ValueError(f"the documents give fewer than seq_len + 1 = {settings.seq_len + 1} training tokens")
        log(
            f"bootstrap: tokenizer {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f}s); "
            f"{len(train_docs)} train docs -> {len(train)} chunks of {settings.seq_len}, "
            f"{len(heldout_docs)} held out -> {len(heldout)} chunks"
        )
        return cls(tokenizer, train, heldout)


def _encode(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> list[list[int]]:
    """The documents' tokens, each ending with eos."""
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []:
        if not ids or ids[-1] != eos:
            ids = [*ids, eos]
        out.append(ids)
    return out


def _pack(token_lists: Sequence[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate documents and cut into rows of seq_len + 1 tokens (inputs and shifted targets)."""
    flat = [t for ids in token_lists for t in ids]
    rows = len(flat) // (seq_len + 1)
    if rows == 0:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    return torch.tensor(flat[: rows * (seq_len + 1)], dtype=torch.long).view(rows, seq_len + 1)


def _use_bf16(mode: str, dev: torch.device) -> bool:
    if mode != "auto":
        return mode == "bf16"
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and cpu_has_native_bf16()


@dataclass
class _Run:
    steps: int = 0
    tokens_seen: int = 0
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    window_loss: float = 0.0  # training loss summed since the last point of the curve
    window_steps: int = 0

    def add(self, loss: float, tokens: int) -> None:
        self.steps += 1
        self.tokens_seen += tokens
        self.window_loss += loss
        self.window_steps += 1

    def close_window(self) -> float:
        """Add the window's mean loss to the curve at this step; returns it."""
        mean = self.window_loss / self.window_steps
        self.loss_curve.append((self.steps, mean))
        self.window_loss, self.window_steps = 0.0, 0
        return mean


class _Horizon:
    """The cosine horizon: max_steps, or fewer when the time budget binds. It is estimated from the pace after
    a few steps and re-estimated at every log point (the pace of shared machines drifts), and never drops
    below max_steps unless time binds, so a run that max_steps bounds is deterministic."""

    CALIBRATE_AT = 10  # steps timed before the first estimate

    def __init__(self, settings: BootstrapSettings):
        self.max_steps, self.max_seconds = settings.max_steps, settings.max_seconds
        self.total = settings.max_steps
        self.start = time.perf_counter()
        self.pace_start, self.pace_step = self.start, 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        """The share of the budget used: of the time or of the steps, whichever is further."""
        return max(self.elapsed() / self.max_seconds, step / self.max_steps)

    def stepped(self, step: int, log: Callable[[str], None]) -> None:
        """After each step: the pace is timed from step 1 (the first step pays one-off costs), first planned
        after CALIBRATE_AT more."""
        if step == 1:
            self.pace_start, self.pace_step = time.perf_counter(), 1
        elif step == self.CALIBRATE_AT + 1:
            self.replan(step)
            log(f"bootstrap: {self.elapsed() / step:.2f}s/step -> planning {self.total} steps")

    def replan(self, step: int) -> None:
        now = time.perf_counter()
        per_step = (now - self.pace_start) / max(step - self.pace_step, 1)
        remaining = self.max_seconds - (now - self.start)
        self.total = min(self.max_steps, step + max(int(remaining / per_step), 0))
        self.pace_start, self.pace_step = now, step


def _train(model, chunks: torch.Tensor, settings: BootstrapSettings, dev, use_bf16: bool, log) -> _Run:
    """The pretraining loop, until max_steps or max_seconds; a log line at every tenth of the budget."""
    optimizer = _optimizer(model, settings)
    stream = _batches(chunks, settings.batch_size, settings.seed)
    horizon, run, next_log = _Horizon(settings), _Run(), 0.1
    while run.steps < horizon.total and horizon.elapsed() < settings.max_seconds:
        batch = next(stream).to(dev)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(run.steps, horizon.total, settings)
        run.add(_step(model, optimizer, batch, dev, use_bf16), batch[:, 1:].numel())
        horizon.stepped(run.steps, log)
        progress = horizon.progress(run.steps)
        if progress >= next_log or run.steps >= horizon.total:
            if horizon.CALIBRATE_AT + 1 < run.steps < horizon.total:
                horizon.replan(run.steps)
            loss = run.close_window()
            log(
                f"bootstrap: step {run.steps}/{horizon.total} loss {loss:.3f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} tokens {run.tokens_seen:,} {horizon.elapsed():.0f}s"
            )
            while next_log <= progress:
                next_log += 0.1
    if run.window_steps:
        run.close_window()
    return run


def _optimizer(model: LlamaForCausalLM, settings: BootstrapSettings) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )


def _batches(chunks: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """One shuffled pass per epoch, seeded; the remainder of an epoch is dropped."""
    order_rng = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(chunks))
    while True:
        perm = torch.randperm(len(chunks), generator=order_rng)
        for i in range(0, len(perm) - size + 1, size):
            yield chunks[perm[i : i + size]]


def _step(model: LlamaForCausalLM, optimizer, batch: torch.Tensor, dev: torch.device, use_bf16: bool) -> float:
    """One optimizer step on a batch of chunks; returns its loss."""
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_bf16):
        logits = model(input_ids=batch[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


def _lr_at(step: int, total: int, settings: BootstrapSettings) -> float:
    """Linear warmup, then cosine decay to 10% of the peak at `total` steps."""
    warmup = max(min(settings.warmup_steps, total // 4), 1)
    if step < warmup:
        return settings.learning_rate * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def _perplexity(model: LlamaForCausalLM, chunks: torch.Tensor, batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        batch = chunks[i : i + batch_size].to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += batch[:, 1:].numel()
    model.train()
    return math.exp(total / count) if count else float("nan")
