"""Generation and scoring with plain transformers (CPU or one GPU), with optional peft LoRA adapters.

    engine = TransformersEngine("path/to/model", TransformersEngineConfig(batch_size=32))
    outs = engine.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(n=4, temperature=0.8))
    scores = engine.logprobs([(context, continuation)], adapter="path/to/lora")

Determinism. Every sampled sequence draws from its own torch.Generator, seeded from
(params.seed, the prompt's token ids, the sample index): the same prompt with the same params gives the
same samples whatever else is in the call. Batches are formed deterministically (prompts sorted by
length, then batch_size sequences at a time), so repeating a call, in this process or another, gives
identical texts. (Changing batch_size changes padding, which can change float rounding, so identical
texts across different batch sizes are likely but not promised.)

Tokenization. A raw-string prompt is tokenized with the tokenizer's special tokens (as vLLM does); a chat
is rendered with the model's chat template and tokenized without adding any (the template writes them).
Scoring (`logprobs`) tokenizes its strings without adding special tokens, like a rendered chat.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from srlm.engines.runtime import ModelLoadError, load_causal_lm, model_max_length
from srlm.engines.types import Completion, GenerationOutput, LogProb, Message, Prompt, SamplingParams

# end-of-turn tokens that chat models declare besides (or instead of) eos; used as stop ids when present
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>")


@dataclass
class TransformersEngineConfig:
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    dtype: str = "auto"             # auto (bf16 on a CUDA GPU with bf16, else float32) | float32 | bfloat16 | float16
    batch_size: int = 32            # sequences per forward batch (prompts x n for generation)
    trust_remote_code: bool = False # let transformers run code shipped with the model directory

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def sequence_seed(seed: int, token_ids: Sequence[int], sample_index: int) -> int:
    """The seed of one sampled sequence: a hash of the call's seed, the prompt's tokens and the sample index."""
    digest = hashlib.sha256(f"{seed}|{sample_index}|{','.join(map(str, token_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def count_tokens(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text as scoring sees it (no special tokens added)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def render_chat(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """A chat rendered with the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {tokenizer.name_or_path} has no chat template; send raw-string prompts")
    return tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """A raw string with the tokenizer's special tokens (as vLLM does); a chat rendered, with none added."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return tokenizer(render_chat(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context tokens and continuation tokens, as lm-evaluation-harness splits them: trailing spaces of
    the context move to the continuation; the continuation is what follows the context's tokens in the
    tokenization of the whole string. The context gets the special tokens the tokenizer puts in front of
    a text (Llama's bos, as the harness encodes it) unless it already starts with them (a rendered chat).
    An empty context becomes the bos (else eos) token."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    cont = whole[len(ctx) :]
    if ctx:
        lead = tokenizer("", add_special_tokens=True)["input_ids"]
        if ctx[: len(lead)] != lead:
            ctx = lead + ctx
    else:
        ctx = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ctx, cont


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """eos of the tokenizer and of the generation config, plus declared end-of-turn special tokens."""
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, (list, tuple)):
            ids.extend(int(v) for v in value)
    special = set(getattr(tokenizer, "all_special_tokens", []))
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN_TOKENS:
        if token in special and token in vocab:
            ids.append(vocab[token])
    return sorted(set(ids))


class _SeededSampler(LogitsProcessor):
    """A logits processor that samples each row with its own generator (temperature, top_p) and returns
    logits where only the sampled token is finite, so greedy selection inside `generate` picks it."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= self.top_p  # keep the smallest set reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_idx, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = logits.softmax(dim=-1)
        chosen = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        ).squeeze(-1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out


class _RowStopper(StoppingCriteria):
    """A stopping criterion per row: a per-row token budget, and stop strings (checked on decoded text)."""

    def __init__(self, prompt_width: int, budgets: list[int], stop: tuple[str, ...], tokenizer):
        self.prompt_width = prompt_width
        self.budgets = torch.tensor(budgets)
        self.stop = stop
        self.tokenizer = tokenizer
        self.longest_stop = max((len(s) for s in stop), default=0)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        done = (self.budgets <= generated).to(input_ids.device)
        if self.stop:
            # a stop string ends within the last few tokens; decoding a window keeps this cheap
            # (a character is at most 4 byte-level tokens)
            window = input_ids[:, max(self.prompt_width, input_ids.shape[1] - 4 * self.longest_stop - 8) :]
            texts = self.tokenizer.batch_decode(window, skip_special_tokens=True)
            hits = torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)
            done = done | hits
        return done


class TransformersEngine:
    """A causal LM from a local directory, behind the engine interface (generate, logprobs, render_chat)."""

    def __init__(self, model_path: str | os.PathLike, config: TransformersEngineConfig | None = None):
        self.config = config or TransformersEngineConfig()
        self.model_path = Path(model_path)
        self.model, self.tokenizer = load_causal_lm(
            self.model_path,
            device=self.config.device,
            dtype=self.config.dtype,
            trust_remote_code=self.config.trust_remote_code,
            padding_side="left",
        )
        self.device = next(self.model.parameters()).device
        self._max_length = model_max_length(self.model, self.tokenizer)
        self._stop_ids = self._collect_stop_ids()
        # generation follows SamplingParams only: drop the model's own defaults (repetition penalty, top_k, ...)
        self.model.generation_config = GenerationConfig(
            eos_token_id=self._stop_ids, pad_token_id=self.tokenizer.pad_token_id, bos_token_id=self.tokenizer.bos_token_id
        )
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._peft = None  # PeftModel wrapping self.model once the first adapter is loaded
        self._adapters: dict[str, tuple[str, float]] = {}  # resolved path -> (adapter name, file mtime)
        self._lock = threading.RLock()  # one call at a time: adapters are switched on the shared model

    # ------------------------------------------------------------------------------------------ basics

    @property
    def max_length(self) -> int:
        """The usable context in tokens (prompt + generated, or context + continuation)."""
        return self._max_length

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def _collect_stop_ids(self) -> list[int]:
        ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        if not ids:
            raise ModelLoadError(f"{self.model_path}: neither the tokenizer nor the generation config names an eos token")
        return ids

    # ---------------------------------------------------------------------------------------- adapters

    def _adapter_name(self, adapter: str | os.PathLike) -> str:
        from peft import PeftModel

        path = Path(adapter).expanduser().resolve()
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(f"{path} is not a peft adapter directory (no adapter_config.json)")
        weights = [p for p in (path / "adapter_model.safetensors", path / "adapter_model.bin") if p.is_file()]
        mtime = weights[0].stat().st_mtime if weights else 0.0
        key = str(path)
        if key in self._adapters:
            name, seen = self._adapters[key]
            if seen == mtime:
                return name
            self._peft.delete_adapter(name)  # the directory was rewritten: load it again
            del self._adapters[key]
        name = f"adapter_{len(self._adapters)}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except Exception as exc:
            raise ModelLoadError(f"{path}: could not load the LoRA adapter onto {self.model_path} ({exc})") from exc
        self._peft.eval()
        self._adapters[key] = (name, mtime)
        return name

    @contextlib.contextmanager
    def _using(self, adapter: str | os.PathLike | None) -> Iterator[torch.nn.Module]:
        """The model to call with `adapter` active (None: the plain base model), for one call."""
        with self._lock:
            if adapter is None:
                if self._peft is None:
                    yield self.model
                else:
                    with self._peft.disable_adapter():
                        yield self._peft
            else:
                name = self._adapter_name(adapter)
                self._peft.set_adapter(name, inference_mode=True)
                yield self._peft

    # -------------------------------------------------------------------------------------- generation

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[GenerationOutput]:
        """n completions per prompt, in input order. See the module docstring for seeding."""
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        for i, ids in enumerate(encoded):
            if len(ids) >= self.max_length:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens: no room to generate within the model's context of "
                    f"{self.max_length} tokens"
                )
        greedy = params.temperature == 0
        samples = 1 if greedy else params.n  # greedy: n copies of one decode
        # rows: (prompt index, sample index), prompts longest first (ties by index), samples in order
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        rows = [(i, j) for i in order for j in range(samples)]
        results: dict[tuple[int, int], Completion] = {}
        with self._using(adapter) as model, torch.inference_mode():
            for start in range(0, len(rows), self.config.batch_size):
                batch = rows[start : start + self.config.batch_size]
                for key, completion in zip(batch, self._generate_batch(model, batch, encoded, params, greedy)):
                    results[key] = completion
        return [
            GenerationOutput(
                prompt_index=i,
                completions=[results[(i, 0 if greedy else j)] for j in range(params.n)],
            )
            for i in range(len(encoded))
        ]

    def _generate_batch(
        self, model, batch: list[tuple[int, int]], encoded: list[list[int]], params: SamplingParams, greedy: bool
    ) -> list[Completion]:
        pad = self.tokenizer.pad_token_id
        width = max(len(encoded[i]) for i, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i, _) in enumerate(batch):
            ids = encoded[i]
            input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[r, width - len(ids) :] = 1
        budgets = [min(params.max_new_tokens, self.max_length - len(encoded[i])) for i, _ in batch]
        gen_config = GenerationConfig(
            max_new_tokens=max(budgets),
            do_sample=False,
            num_beams=1,
            eos_token_id=self._stop_ids,
            pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        processors = LogitsProcessorList()
        if not greedy:
            seeds = [sequence_seed(params.seed, encoded[i], j) for i, j in batch]
            processors.append(_SeededSampler(seeds, params.temperature, params.top_p, self.device))
        stopper = _RowStopper(width, budgets, tuple(params.stop), self.tokenizer)
        out = model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            generation_config=gen_config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        generated = out[:, width:].tolist()
        return [self._finish(tokens[:budget], params.stop) for tokens, budget in zip(generated, budgets)]

    def _finish(self, tokens: list[int], stop: Sequence[str]) -> Completion:
        """Cut one generated row (already cut to its budget) at its end: the first stop id or stop string.
        Rows that ended early are followed by padding, which comes after either of them."""
        stop_ids = set(self._stop_ids)
        end = next((k for k, t in enumerate(tokens) if t in stop_ids), None)
        body = tokens if end is None else tokens[:end]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        if stop:
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                # the fewest tokens whose text holds a stop string: the stop ends on that token
                n = next(
                    k for k in range(1, len(body) + 1)
                    if any(s in self.tokenizer.decode(body[:k], skip_special_tokens=True) for s in stop)
                )
                return Completion(text=text[:cut], n_tokens=n, finish_reason="stop")
        if end is not None:
            return Completion(text=text, n_tokens=end + 1, finish_reason="stop")
        return Completion(text=text, n_tokens=len(body), finish_reason="length")

    # ----------------------------------------------------------------------------------------- scoring

    def logprobs(self, requests: Sequence[tuple[str, str]], adapter: str | None = None) -> list[LogProb]:
        """Sum of log p(continuation tokens | context) and the token count, per (context, continuation).

        Over the context length, tokens are dropped from the left (the context first); a continuation longer
        than the whole context keeps its last max_length tokens scored.
        """
        L = self.max_length
        items = []  # (request index, input ids, number of scored tokens at the end)
        for k, (context, continuation) in enumerate(requests):
            ctx, cont = encode_pair(self.tokenizer, context, continuation)
            full = (ctx + cont)[-(L + 1) :]
            items.append((k, full, min(len(cont), len(full) - 1)))
        results: list[LogProb | None] = [None] * len(requests)
        for k, full, n in items:
            if n == 0:
                results[k] = LogProb(total=0.0, n_tokens=0)
        todo = sorted((it for it in items if it[2] > 0), key=lambda it: (-len(it[1]), it[0]))
        pad = self.tokenizer.pad_token_id
        with self._using(adapter) as model, torch.inference_mode():
            for start in range(0, len(todo), self.config.batch_size):
                batch = todo[start : start + self.config.batch_size]
                width = max(len(full) - 1 for _, full, _ in batch)
                inputs = torch.full((len(batch), width), pad, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for r, (_, full, _) in enumerate(batch):  # right padding
                    inputs[r, : len(full) - 1] = torch.tensor(full[:-1], dtype=torch.long)
                    attention[r, : len(full) - 1] = 1
                # only the positions that predict continuation tokens need logits (saves the vocab projection)
                first = min(len(full) - 1 - n for _, full, n in batch)
                kwargs = {"logits_to_keep": width - first} if self._keeps_logits else {}
                logits = model(
                    input_ids=inputs.to(self.device), attention_mask=attention.to(self.device), **kwargs
                ).logits
                offset = width - logits.shape[1]
                for r, (k, full, n) in enumerate(batch):
                    T = len(full) - 1
                    row = torch.log_softmax(logits[r, T - n - offset : T - offset].float(), dim=-1)
                    targets = torch.tensor(full[-n:], dtype=torch.long, device=row.device)
                    total = row.gather(1, targets.unsqueeze(1)).sum().item()
                    results[k] = LogProb(total=total, n_tokens=n)
        return results  # type: ignore[return-value]
