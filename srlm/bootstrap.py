"""The `bootstrap` base model: a tiny Llama and a byte-level BPE tokenizer, trained from scratch on CPU.

No model hub is reachable where this project is developed and tested, so the default base model is made
here from the instruction text of the offline data kit, in a couple of CPU minutes. It is small and weak
but real: a `LlamaForCausalLM` plus a `PreTrainedTokenizerFast` with a chat template, saved with
`save_pretrained`, so it loads with `AutoModelForCausalLM` / `AutoTokenizer` (and peft, and vLLM) like any
Hugging Face model directory.

    tokenizer = train_tokenizer(texts, vocab_size=4096)
    model = build_model(tokenizer, BootstrapConfig())
    report = pretrain(documents, Path("out/bootstrap"), BootstrapConfig())

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
from typing import Callable, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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


@dataclass
class BootstrapConfig:
    """Sizes and budget of the bootstrap model. Defaults: measured on 2 shared CPU cores (see README)."""

    vocab_size: int = 4096          # BPE vocabulary asked for (a small corpus may give fewer)
    hidden_size: int = 256
    intermediate_size: int = 688    # MLP width (~8/3 x hidden, as Llama)
    num_layers: int = 4
    num_heads: int = 4
    context_length: int = 1024      # max_position_embeddings and tokenizer.model_max_length
    seq_len: int = 256              # pretraining chunk length (documents are packed into chunks)
    batch_size: int = 16            # chunks per optimizer step
    learning_rate: float = 3e-3     # AdamW peak; linear warmup then cosine to 10%
    warmup_steps: int = 50
    max_seconds: float = 150.0      # wall-clock budget of the training loop
    max_steps: int = 100_000        # step cap; the loop stops at whichever comes first
    heldout_fraction: float = 0.02  # last documents held out to measure perplexity
    seed: int = 0
    mixed_precision: str = "auto"   # auto (bf16 autocast on CUDA with bf16 and on CPUs with native bf16) | bf16 | no

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.seq_len > self.context_length:
            raise ValueError(f"seq_len ({self.seq_len}) cannot exceed context_length ({self.context_length})")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


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


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: BootstrapConfig) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by `cfg`, with vocab_size = len(tokenizer) and tied embeddings.
    Also sets tokenizer.model_max_length to cfg.context_length, so the pair agrees once saved."""
    tokenizer.model_max_length = cfg.context_length
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ---------------------------------------------------------------------------------------------- pretrain


def _pack(token_lists: Sequence[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate documents and cut into rows of seq_len + 1 tokens (inputs and shifted targets)."""
    flat = [t for ids in token_lists for t in ids]
    rows = len(flat) // (seq_len + 1)
    if rows == 0:
        return torch.empty(0, seq_len + 1, dtype=torch.long)
    return torch.tensor(flat[: rows * (seq_len + 1)], dtype=torch.long).view(rows, seq_len + 1)


def _use_bf16(mode: str, dev: torch.device) -> bool:
    if mode not in ("auto", "bf16", "no"):
        raise ValueError(f"mixed_precision must be auto, bf16 or no, got {mode!r}")
    if mode != "auto":
        return mode == "bf16"
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and cpu_has_native_bf16()


def _lr_at(step: int, total: int, cfg: BootstrapConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak at `total` steps."""
    warmup = max(min(cfg.warmup_steps, total // 4), 1)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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


def pretrain(
    documents: Sequence[str],
    out_dir: Path,
    cfg: BootstrapConfig,
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
    out_dir = Path(out_dir)
    if not documents:
        raise ValueError("pretrain needs at least one document")
    dev = resolve_device(device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    n_heldout = int(len(documents) * cfg.heldout_fraction)
    if cfg.heldout_fraction > 0 and len(documents) >= 2:
        n_heldout = max(n_heldout, 1)
    train_docs, heldout_docs = list(documents[: len(documents) - n_heldout]), list(documents[len(documents) - n_heldout :])

    t0 = time.perf_counter()
    tokenizer = train_tokenizer(train_docs, cfg.vocab_size, context_length=cfg.context_length)
    eos = tokenizer.eos_token_id

    def encode(docs: list[str]) -> list[list[int]]:
        out = []
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []:
            if not ids or ids[-1] != eos:
                ids = [*ids, eos]
            out.append(ids)
        return out

    train_chunks = _pack(encode(train_docs), cfg.seq_len)
    heldout_ids = encode(heldout_docs)
    heldout_tokens = sum(len(ids) for ids in heldout_ids)
    # a small held-out set still measures perplexity, in one shorter chunk
    heldout_chunks = _pack(heldout_ids, min(cfg.seq_len, max(heldout_tokens - 1, 1)))
    if len(train_chunks) == 0:
        raise ValueError(f"the documents give fewer than seq_len + 1 = {cfg.seq_len + 1} training tokens")
    log(
        f"bootstrap: tokenizer {len(tokenizer)} tokens ({time.perf_counter() - t0:.1f}s); "
        f"{len(train_docs)} train docs -> {len(train_chunks)} chunks of {cfg.seq_len}, "
        f"{len(heldout_docs)} held out -> {len(heldout_chunks)} chunks"
    )

    model = build_model(tokenizer, cfg).to(dev)
    model.train()
    params = count_parameters(model)
    log(
        f"bootstrap: Llama {cfg.num_layers}x{cfg.hidden_size} ({params / 1e6:.2f}M parameters) on {dev}"
        f"{' with bf16 autocast' if _use_bf16(cfg.mixed_precision, dev) else ''}"
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, 0.95),
    )
    use_bf16 = _use_bf16(cfg.mixed_precision, dev)
    order_rng = torch.Generator().manual_seed(cfg.seed)

    def batches():
        size = min(cfg.batch_size, len(train_chunks))
        while True:  # one shuffled pass per epoch; the remainder of an epoch is dropped
            perm = torch.randperm(len(train_chunks), generator=order_rng)
            for i in range(0, len(perm) - size + 1, size):
                yield train_chunks[perm[i : i + size]]

    # The cosine horizon: max_steps, or fewer when the time budget binds. It is estimated from the pace after
    # a few steps and re-estimated at every log point (the pace of shared machines drifts), and never
    # drops below max_steps unless time binds, so a run that max_steps bounds is deterministic.
    total_steps = cfg.max_steps
    calibrate_at = 10
    loss_curve: list[tuple[int, float]] = []
    tokens_seen = step = 0
    window_loss, window_n = 0.0, 0
    next_log = 0.1
    loop_start = time.perf_counter()
    pace_start, pace_step = loop_start, 0
    stream = batches()

    def replan() -> None:
        nonlocal total_steps, pace_start, pace_step
        now = time.perf_counter()
        per_step = (now - pace_start) / max(step - pace_step, 1)
        remaining = cfg.max_seconds - (now - loop_start)
        total_steps = min(cfg.max_steps, step + max(int(remaining / per_step), 0))
        pace_start, pace_step = now, step

    while step < total_steps:
        if time.perf_counter() - loop_start >= cfg.max_seconds:
            break
        batch = next(stream).to(dev)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, total_steps, cfg)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += batch[:, 1:].numel()
        window_loss += loss.item()
        window_n += 1
        if step == 1:
            pace_start, pace_step = time.perf_counter(), 1  # the first step pays one-off costs
        elif step == calibrate_at + 1:
            replan()
            log(f"bootstrap: {(time.perf_counter() - loop_start) / step:.2f}s/step -> planning {total_steps} steps")
        progress = max((time.perf_counter() - loop_start) / cfg.max_seconds, step / cfg.max_steps)
        if progress >= next_log or step >= total_steps:
            if step > calibrate_at + 1 and step < total_steps:
                replan()
            loss_curve.append((step, window_loss / window_n))
            log(
                f"bootstrap: step {step}/{total_steps} loss {window_loss / window_n:.3f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} tokens {tokens_seen:,} "
                f"{time.perf_counter() - loop_start:.0f}s"
            )
            window_loss, window_n = 0.0, 0
            while next_log <= progress:
                next_log += 0.1
    if window_n:
        loss_curve.append((step, window_loss / window_n))

    ppl = _perplexity(model, heldout_chunks[:64], cfg.batch_size, dev)
    log(f"bootstrap: {step} steps, {tokens_seen:,} tokens; held-out perplexity {ppl:.1f}")
    model.eval()
    with atomic_output_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    report = BootstrapReport(
        parameters=params,
        tokens_seen=tokens_seen,
        steps=step,
        seconds=time.perf_counter() - started,
        loss_curve=loss_curve,
        heldout_perplexity=ppl,
        vocab_size=len(tokenizer),
    )
    log(f"bootstrap: saved to {out_dir} ({report.seconds:.0f}s in all)")
    return report
