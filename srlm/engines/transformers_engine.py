"""Generation and scoring with plain transformers (CPU or one GPU), with optional peft LoRA adapters.

    engine = TransformersEngine("path/to/model", TransformersEngineSettings("cpu", "auto", 32, trust_remote_code=False))
    outs = engine.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(n=4, temperature=0.8))
    scores = engine.logprobs([(context, continuation)], adapter="path/to/lora")

Determinism. Every sampled sequence draws from its own torch.Generator, seeded from
(params.seed, the prompt's token ids, the sample index): the same prompt with the same params gives the
same samples whatever else is in the call. Batches are formed deterministically (prompts sorted by
length, then batch_size sequences at a time), so repeating a call, in this process or another, gives
identical texts. (Changing batch_size changes padding, which can change float rounding, so identical
texts across different batch sizes are likely but not promised.)

Speed. Generation runs its own decode loop instead of `model.generate` (bench/engine_speed.py compares
them): prompts are prefilled in parts of similar lengths, the KV cache is allocated once per batch instead
of concatenated at every step, a one-token attention step of a grouped-query model reads each cached
key/value head once instead of a copy per query head, top_p ranks the most likely tokens instead of
sorting the vocabulary, rows that have ended leave the batch, and a LoRA adapter is merged into copies of
the weights it changes for the call, so decoding pays no LoRA matmuls. The samples are the ones
torch.multinomial draws from each row's generator (see `_SeededSampler`), so texts do not depend on these.
Scoring runs a context shared by several requests (the choices of a multiple-choice question) once, and
each continuation on top of its KV cache.

Tokenization, prompt checks, seeds and stop tokens: srlm/engines/tokenization.py, shared with the other engines.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, GenerationConfig
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from srlm.engines.runtime import ModelLoadError, adapter_dir, load_causal_lm, model_max_length
from srlm.engines.tokenization import TokenizingMixin, encode_prompts, scoring_window, sequence_seed, stop_token_ids
from srlm.engines.types import Completion, GenerationOutput, LogProb, Prompt, SamplingParams


@dataclass(frozen=True)
class TransformersEngineSettings:
    """What the engine is built with (resources/generation.py fills it from the experiment config)."""

    device: str  # model.device: auto | cpu | cuda | cuda:N
    dtype: str  # model.dtype: auto (bf16 on a CUDA GPU with bf16, else float32) | float32 | bfloat16 | float16
    batch_size: int  # generation.batch_size: sequences per forward batch (prompts x n for generation)
    trust_remote_code: bool  # model.trust_remote_code


# ------------------------------------------------------------------------------------------- attention

_ATTENTION = "srlm_sdpa"  # transformers' sdpa with a cheaper one-token step for grouped-query attention


def _sdpa_folding_groups(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, except for a one-token query of grouped-query attention: the query heads
    that share a key/value head are folded into the query length, so SDPA reads each cached key/value head
    once. (transformers repeats the cached keys and values for every query head whenever there is a mask:
    a copy of the whole cache per layer and decode step.)"""
    batch, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    plain = attention_mask is None or (attention_mask.dtype == torch.bool and attention_mask.shape[1] == 1)
    if q_len != 1 or groups == 1 or not plain or kwargs.get("dropout", 0.0) or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = F.scaled_dot_product_attention(
        query.reshape(batch, heads // groups, groups, dim), key, value, attn_mask=attention_mask, scale=kwargs.get("scaling")
    )
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(_ATTENTION, _sdpa_folding_groups)
ALL_MASK_ATTENTION_FUNCTIONS.register(_ATTENTION, sdpa_mask)  # the boolean masks sdpa takes


class _PreallocatedLayer(DynamicLayer):
    """One layer's KV cache in buffers allocated once (rows x heads x capacity x dim) that hand out views of
    the filled part: no concatenation of the whole cache at every step."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def _allocate(self, rows: int, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        # zeros, not garbage: a masked position still multiplies its value by a zero weight, and 0 * NaN is NaN
        self.dtype, self.device = like_keys.dtype, like_keys.device
        self.key_buffer = like_keys.new_zeros((rows, like_keys.shape[1], self.capacity, like_keys.shape[-1]))
        self.value_buffer = like_values.new_zeros((rows, like_values.shape[1], self.capacity, like_values.shape[-1]))
        self.is_initialized = True

    def _set_length(self, length: int) -> None:
        self.length = length
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._allocate(key_states.shape[0], key_states, value_states)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache of {self.capacity} positions is full")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def selected(self, rows: torch.Tensor) -> "_PreallocatedLayer":
        """A copy holding only `rows` (batch indices), with the same capacity."""
        layer = _PreallocatedLayer(self.capacity)
        if self.is_initialized:
            layer.dtype, layer.device, layer.is_initialized = self.dtype, self.device, True
            # the whole buffer in one copy: its unused tail is shorter than the filled part in practice
            layer.key_buffer = self.key_buffer.index_select(0, rows)
            layer.value_buffer = self.value_buffer.index_select(0, rows)
            layer._set_length(self.length)
        return layer

    @staticmethod
    def stacked(parts: Sequence["_PreallocatedLayer"], width: int, capacity: int) -> "_PreallocatedLayer":
        """One layer with the rows of `parts` in order, each part's positions moved to end at `width` (left
        padding: what a batch of all their rows padded to `width` would hold, up to the padding's values)."""
        layer = _PreallocatedLayer(capacity)
        layer._allocate(sum(p.keys.shape[0] for p in parts), parts[0].keys, parts[0].values)
        start = 0
        for part in parts:
            end = start + part.keys.shape[0]
            layer.key_buffer[start:end, :, width - part.length : width] = part.keys
            layer.value_buffer[start:end, :, width - part.length : width] = part.values
            start = end
        layer._set_length(width)
        return layer


def _preallocated_cache(capacity: int) -> Cache:
    return Cache(layer_class_to_replicate=functools.partial(_PreallocatedLayer, capacity))


def _select_rows(cache: Cache, rows: torch.Tensor) -> Cache:
    return Cache(layers=[layer.selected(rows) for layer in cache.layers])


# -------------------------------------------------------------------------------------------- sampling

_NUCLEUS_CANDIDATES = 512  # top_p ranks this many most likely tokens (a step with a wider nucleus sorts them all)


def _nucleus(logits: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the candidates for top_p sampling: (their logits, -inf outside the nucleus; their token ids),
    most likely first. The nucleus is the smallest set of most likely tokens whose probability reaches top_p:
    a token is in it while the mass of the tokens ranked before it is below top_p. Sorting the vocabulary
    costs more than the model step and nuclei are small, so only the top candidates are ranked (topk)."""
    probs = logits.softmax(dim=-1)
    values, index = probs.topk(min(_NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    cumulative = values.cumsum(dim=-1)
    if (cumulative[:, -1] < top_p).any():
        values, index = probs.sort(dim=-1, descending=True)
        cumulative = values.cumsum(dim=-1)
    return logits.gather(1, index).masked_fill(cumulative - values >= top_p, float("-inf")), index


class _SeededSampler:
    """Samples each row from temperature- and top_p-shaped probabilities with that row's own generator.

    The draw is the one torch.multinomial(probs, 1, generator) makes: argmax(probs / q) with q ~ Exp(1) drawn
    for every token of the vocabulary from the generator. Only the nucleus can win, so probs and the argmax
    are computed over its candidates."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The next token of each row; `rows` says which generator each row of `logits` uses."""
        logits = logits.float() / self.temperature
        q = torch.empty_like(logits)
        for k, row in enumerate(rows):
            q[k].exponential_(generator=self.generators[row])
        if self.top_p == 1.0:
            return (logits.softmax(dim=-1) / q).argmax(dim=-1)
        candidates, index = _nucleus(logits, self.top_p)
        chosen = (candidates.softmax(dim=-1) / q.gather(1, index)).argmax(dim=-1, keepdim=True)
        return index.gather(1, chosen).squeeze(1)


def _greedy(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return logits.argmax(dim=-1)


# ---------------------------------------------------------------------------------------------- decoding


def _left_mask(lengths: list[int], width: int, device) -> torch.Tensor:
    """The attention mask of rows of these lengths left-padded to `width`."""
    lengths_t = torch.tensor(lengths, device=device)
    return (torch.arange(width, device=device) >= width - lengths_t[:, None]).long()


def _run_in_parts(
    model, sequences: list[list[int]], keep: list[int], room: int | None, pad: int, keeps_logits: bool, device
) -> tuple[list[torch.Tensor], Cache | None]:
    """Run left-padded sequences in parts of similar lengths (see `_similar_lengths`), so that short ones do
    not pay for the longest one's padding. Returns, per sequence, the logits of its last keep[i] positions;
    and unless `room` is None, one KV cache of all of them (left-padded to the longest, as one batch would
    hold them) with room for `room` more positions."""
    logits, caches = [], []
    for start, end in _similar_lengths([len(s) for s in sequences]):
        width = max(len(s) for s in sequences[start:end])
        ids = torch.full((end - start, width), pad, dtype=torch.long)
        for r, seq in enumerate(sequences[start:end]):
            ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask = _left_mask([len(s) for s in sequences[start:end]], width, device)
        caches.append(None if room is None else _preallocated_cache(width))
        out = model(
            input_ids=ids.to(device),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=caches[-1],
            use_cache=room is not None,
            **({"logits_to_keep": max(keep[start:end])} if keeps_logits else {}),
        ).logits
        logits += [out[r, -k:] for r, k in enumerate(keep[start:end])]
    if room is None:
        return logits, None
    width = max(len(s) for s in sequences)
    layers = zip(*(c.layers for c in caches))
    return logits, Cache(layers=[_PreallocatedLayer.stacked(parts, width, width + room) for parts in layers])


class _BatchDecoder:
    """The decoding state of one batch: its KV cache, attention mask (left padding) and positions, and which
    rows are still in the batch (rows that have ended are dropped, see `keep`)."""

    def __init__(self, model, prompts: list[list[int]], steps: int, pad: int, device: torch.device, keeps_logits: bool):
        self.model, self.keeps_logits = model, keeps_logits
        self.length = max(len(p) for p in prompts)
        self.mask = torch.ones((len(prompts), self.length + steps), dtype=torch.long, device=device)
        self.mask[:, : self.length] = _left_mask([len(p) for p in prompts], self.length, device)
        self.positions = torch.tensor([[len(p) - 1] for p in prompts], device=device)
        self.rows = list(range(len(prompts)))  # prompt rows of the batch, in batch order
        logits, self.cache = _run_in_parts(model, prompts, [1] * len(prompts), steps, pad, keeps_logits, device)
        self.logits = torch.cat(logits)

    def step(self, tokens: torch.Tensor) -> None:
        """Feed one token per row; self.logits then predicts the next one."""
        self.length += 1
        self.positions = self.positions + 1
        out = self.model(
            input_ids=tokens.view(-1, 1),
            attention_mask=self.mask[:, : self.length],
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
            **({"logits_to_keep": 1} if self.keeps_logits else {}),
        )
        self.logits = out.logits[:, -1]

    def keep(self, positions: list[int]) -> None:
        """Keep only the rows at these batch positions (a copy of the cache: worth it when enough rows ended)."""
        index = torch.tensor(positions, device=self.mask.device)
        self.cache = _select_rows(self.cache, index)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        self.rows = [self.rows[p] for p in positions]


# the padding a part of a batch may carry: its rows' lengths differ by at most this many tokens, or by an
# eighth of the longest (a few tokens of padding cost less than another forward pass)
_PADDING_SLACK = 8


def _similar_lengths(lengths: list[int]) -> list[tuple[int, int]]:
    """(start, end) of runs of consecutive rows whose lengths differ by at most max(_PADDING_SLACK, an eighth
    of the longest); rows sorted by length give the fewest runs."""
    parts, start = [], 0
    for end in range(1, len(lengths) + 1):
        run = lengths[start : end + 1]
        if end == len(lengths) or max(run) - min(run) > max(_PADDING_SLACK, max(run) / 8):
            parts.append((start, end))
            start = end
    return parts


class TransformersEngine(TokenizingMixin):
    """A causal LM from a local directory, behind the engine interface (srlm.engines.types.Engine)."""

    def __init__(self, model_path: str | os.PathLike, settings: TransformersEngineSettings):
        self.settings = settings
        self.model_path = Path(model_path)
        self.model, self.tokenizer = load_causal_lm(
            self.model_path,
            device=settings.device,
            dtype=settings.dtype,
            trust_remote_code=settings.trust_remote_code,
            padding_side="left",
        )
        if self.model.config._attn_implementation == "sdpa":
            self.model.set_attn_implementation(_ATTENTION)
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

    def _collect_stop_ids(self) -> list[int]:
        ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        if not ids:
            raise ModelLoadError(f"{self.model_path}: neither the tokenizer nor the generation config names an eos token")
        return ids

    # ---------------------------------------------------------------------------------------- adapters

    def _adapter_name(self, adapter: str | os.PathLike) -> str:
        from peft import PeftModel

        path = adapter_dir(adapter)
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
                with _merged_adapter(self._peft, name):
                    yield self._peft

    # -------------------------------------------------------------------------------------- generation

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[GenerationOutput]:
        """n completions per prompt, in input order. See the module docstring for seeding."""
        encoded = encode_prompts(self.tokenizer, prompts, self.max_length)
        greedy = params.temperature == 0
        samples = 1 if greedy else params.n  # greedy: n copies of one decode
        # rows: (prompt index, sample index), prompts longest first (ties by index), samples in order
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        rows = [(i, j) for i in order for j in range(samples)]
        results = dict(zip(rows, self._generate_in_batches(rows, encoded, params, adapter)))
        return [
            GenerationOutput(
                prompt_index=i,
                completions=[results[(i, 0 if greedy else j)] for j in range(params.n)],
            )
            for i in range(len(encoded))
        ]

    def generate_rows(
        self, rows: Sequence[tuple[Prompt, int]], params: SamplingParams, adapter: str | None = None
    ) -> list[Completion]:
        """One completion per (prompt, sample index) row, in row order: the row's sample is the one `generate`
        draws for that prompt and index with the same params (the same per-sequence seed), so rows can be
        generated anywhere, in any grouping (srlm/distributed.py sends one row per sample). params.n is not
        used; greedy rows ignore the sample index. Rows are batched as `generate` batches its rows: longest
        prompt first, ties in row order."""
        encoded = encode_prompts(self.tokenizer, [prompt for prompt, _ in rows], self.max_length, what="row")
        # (row index, sample index): _generate_batch seeds each from the row's prompt tokens and sample index
        order = sorted(((k, index) for k, (_, index) in enumerate(rows)), key=lambda r: (-len(encoded[r[0]]), r[0]))
        results = {k: completion for (k, _), completion in zip(order, self._generate_in_batches(order, encoded, params, adapter))}
        return [results[k] for k in range(len(rows))]

    def _generate_in_batches(
        self, rows: list[tuple[int, int]], encoded: list[list[int]], params: SamplingParams, adapter: str | None
    ) -> list[Completion]:
        """A completion per (index into `encoded`, sample index) row, in row order, batch_size rows at a time."""
        greedy = params.temperature == 0
        completions: list[Completion] = []
        with self._using(adapter) as model, torch.inference_mode():
            for start in range(0, len(rows), self.settings.batch_size):
                batch = rows[start : start + self.settings.batch_size]
                completions.extend(self._generate_batch(model, batch, encoded, params, greedy))
        return completions

    def _generate_batch(
        self, model, batch: list[tuple[int, int]], encoded: list[list[int]], params: SamplingParams, greedy: bool
    ) -> list[Completion]:
        prompts = [encoded[i] for i, _ in batch]
        budgets = [min(params.max_new_tokens, self.max_length - len(p)) for p in prompts]
        if greedy:
            choose = _greedy
        else:
            seeds = [sequence_seed(params.seed, encoded[i], j) for i, j in batch]
            choose = _SeededSampler(seeds, params.temperature, params.top_p, self.device)
        decoder = _BatchDecoder(model, prompts, max(budgets), self.tokenizer.pad_token_id, self.device, self._keeps_logits)
        generated: list[list[int]] = [[] for _ in batch]
        ended = [False] * len(batch)
        stop_ids = set(self._stop_ids)
        while True:
            tokens = choose(decoder.logits, decoder.rows)
            for row, token in zip(decoder.rows, tokens.tolist()):
                if not ended[row]:
                    generated[row].append(token)
                    ended[row] = (
                        token in stop_ids or len(generated[row]) >= budgets[row] or self._hits_stop(generated[row], params.stop)
                    )
            live = [p for p, row in enumerate(decoder.rows) if not ended[row]]
            if not live:
                break
            remaining = max(budgets[decoder.rows[p]] - len(generated[decoder.rows[p]]) for p in live)
            # dropping ended rows copies the cache, about the memory traffic of one step: worth it once the
            # ended rows would waste more than one step's work
            if (len(decoder.rows) - len(live)) * remaining >= len(decoder.rows):
                decoder.keep(live)
                tokens = tokens[torch.tensor(live, device=tokens.device)]
            decoder.step(tokens)
        return [self._finish(row_tokens, params.stop) for row_tokens in generated]

    def _hits_stop(self, tokens: list[int], stop: Sequence[str]) -> bool:
        """Whether a stop string ends in the generated tokens so far. It ends within the last few tokens, so
        decoding a window keeps this cheap (a character is at most 4 byte-level tokens)."""
        if not stop:
            return False
        window = tokens[-(4 * max(len(s) for s in stop) + 8) :]
        text = self.tokenizer.decode(window, skip_special_tokens=True)
        return any(s in text for s in stop)

    def _finish(self, tokens: list[int], stop: Sequence[str]) -> Completion:
        """Cut one generated row (at most its budget) at its end: the first stop id or stop string."""
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
        than the whole context keeps its last max_length tokens scored. Requests whose scored tokens follow
        the same tokens (the choices of one multiple-choice question) share one pass over those tokens.
        """
        results: list[LogProb | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}  # prefix -> (request index, scored tokens)
        for k, (context, continuation) in enumerate(requests):
            full, n = scoring_window(self.tokenizer, context, continuation, self.max_length + 1)
            if n == 0:
                results[k] = LogProb(total=0.0, n_tokens=0)
            else:
                groups.setdefault(tuple(full[:-n]), []).append((k, full[-n:]))
        ordered = sorted((_Group(list(p), m) for p, m in groups.items()), key=lambda g: (-len(g.first_pass), g.members[0][0]))
        size = self.settings.batch_size
        with self._using(adapter) as model, torch.inference_mode():
            for start in range(0, len(ordered), size):
                for k, logprob in self._score_chunk(model, ordered[start : start + size]):
                    results[k] = logprob
        return results  # type: ignore[return-value]

    def _score_chunk(self, model, chunk: list[_Group]) -> Iterator[tuple[int, LogProb]]:
        """A first pass runs each group's first_pass tokens (one row per group); the continuations of shared
        groups then run on top of its KV cache, at most batch_size at a time, in runs of similar lengths."""
        rest = [(r, k, s) for r, g in enumerate(chunk) if g.shared for k, s in g.members if len(s) > 1]
        rest.sort(key=lambda item: -len(item[2]))
        keep = [1 if g.shared else len(g.members[0][1]) for g in chunk]
        room = max((len(s) - 1 for _, _, s in rest), default=None)
        pad = self.tokenizer.pad_token_id
        logits, cache = _run_in_parts(model, [g.first_pass for g in chunk], keep, room, pad, self._keeps_logits, self.device)
        first: dict[int, float] = {}  # request of a shared group -> log p of its first scored token
        for g, row in zip(chunk, logits):
            if g.shared:
                logp = torch.log_softmax(row[-1].float(), dim=-1)
                for k, s in g.members:
                    first[k] = logp[s[0]].item()
                    if len(s) == 1:
                        yield k, LogProb(total=first[k], n_tokens=1)
            else:
                k, s = g.members[0]
                yield k, LogProb(total=_sum_logprobs(row, s), n_tokens=len(s))
        mask = _left_mask([len(g.first_pass) for g in chunk], max(len(g.first_pass) for g in chunk), self.device)
        for run_start, run_end in _similar_lengths([len(s) for _, _, s in rest]):
            for start in range(run_start, run_end, self.settings.batch_size):
                part = rest[start : min(run_end, start + self.settings.batch_size)]
                for (_, k, s), total in zip(part, self._score_continuations(model, chunk, cache, mask, part)):
                    yield k, LogProb(total=first[k] + total, n_tokens=len(s))

    def _score_continuations(self, model, chunk, cache: Cache, mask: torch.Tensor, part) -> list[float]:
        """log p of the scored tokens after the first, for (group row, request, scored tokens) in `part`: the
        tokens run on top of their group's cached first pass (`mask`: its attention mask)."""
        rows = torch.tensor([r for r, _, _ in part], device=self.device)
        width = max(len(s) - 1 for _, _, s in part)
        ids = torch.full((len(part), width), self.tokenizer.pad_token_id, dtype=torch.long)
        tail = torch.zeros((len(part), width), dtype=torch.long)
        for i, (_, _, s) in enumerate(part):  # right padding after the continuation
            ids[i, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
            tail[i, : len(s) - 1] = 1
        starts = torch.tensor([len(chunk[r].prefix) for r, _, _ in part], device=self.device)
        logits = model(
            input_ids=ids.to(self.device),
            attention_mask=torch.cat([mask[rows], tail.to(self.device)], dim=1),
            position_ids=starts[:, None] + torch.arange(width, device=self.device),
            past_key_values=_select_rows(cache, rows),
            use_cache=True,
        ).logits
        return [_sum_logprobs(logits[i, : len(s) - 1], s[1:]) for i, (_, _, s) in enumerate(part)]


@dataclass
class _Group:
    """Requests whose scored tokens follow the same prefix tokens. A shared group (several requests) runs the
    prefix once; a lone request runs all its tokens in the first pass, as one sequence."""

    prefix: list[int]
    members: list[tuple[int, list[int]]]  # (request index, scored tokens)

    @property
    def shared(self) -> bool:
        return len(self.members) > 1

    @property
    def first_pass(self) -> list[int]:
        return self.prefix if self.shared else self.prefix + self.members[0][1][:-1]


def _sum_logprobs(logits: torch.Tensor, targets: list[int]) -> float:
    """Sum of log_softmax(logits)[i, targets[i]]: logits has one row per target."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, torch.tensor(targets, device=logp.device).unsqueeze(1)).sum().item()


@contextlib.contextmanager
def _merged_adapter(peft_model, name: str) -> Iterator[None]:
    """Adapter `name` merged into the weights for the duration: a forward then runs the base layers only, with
    no LoRA matmuls per layer and token. peft's own merge (any LoRA variant) with safe_merge writes new weight
    tensors, so putting the old ones back restores the base exactly (peft's unmerge subtracts, leaving
    rounding behind). Costs one copy of the adapted weights for the duration."""
    from peft.tuners.lora import LoraLayer

    saved = []
    try:
        for module in peft_model.modules():
            if isinstance(module, LoraLayer):
                base = module.get_base_layer()
                bias = getattr(base, "bias", None)
                saved.append((module, base, base.weight.data, None if bias is None else bias.data))
                module.merge(safe_merge=True, adapter_names=[name])
        yield
    finally:
        for module, base, weight, bias in saved:
            base.weight.data = weight
            if bias is not None:
                base.bias.data = bias
            module.merged_adapters.clear()
