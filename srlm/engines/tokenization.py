"""What every engine does the same way with a model's Hugging Face tokenizer, so that all of them (the
transformers and vLLM engines, the Ray executor, the resources' ModelTokenizer) see the same tokens:

- a raw-string prompt is tokenized with the tokenizer's special tokens (as vLLM does); a chat is rendered with
  the model's chat template and tokenized without adding any (the template writes them);
- a prompt that leaves no room to generate within the model's context is refused before any work starts;
- a scoring request (context, continuation) is split as lm-evaluation-harness splits it, and cut from the left
  to the positions the engine scores;
- each sampled sequence has its own seed, from the call's seed, the prompt's tokens and the sample index;
- the stop tokens are eos and the end-of-turn tokens a chat model declares.

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from srlm.engines.types import Message, Prompt

# a model config's context length, under the names model families give it
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")

# end-of-turn tokens that chat models declare besides (or instead of) eos; used as stop ids when present
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>")


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


def encode_prompts(tokenizer, prompts: Sequence[Prompt], max_length: int, what: str = "prompt") -> list[list[int]]:
    """Every prompt's tokens; an error naming the first prompt (by its index, as `what`) that leaves no room to
    generate."""
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        if len(ids) >= max_length:
            raise ValueError(
                f"{what} {i} has {len(ids)} tokens: no room to generate within the model's context of {max_length} tokens"
            )
    return encoded


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


def scoring_window(tokenizer, context: str, continuation: str, length: int) -> tuple[list[int], int]:
    """A scoring request's tokens cut from the left to `length` (the context goes first), and how many of the
    last ones are scored: the continuation's, at most all but the first token (a continuation longer than the
    window keeps its last tokens)."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    full = (ctx + cont)[-length:]
    return full, min(len(cont), len(full) - 1)


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


def model_stop_ids(model_path: str, tokenizer) -> list[int]:
    """stop_token_ids of a model directory, with its generation config when it has one."""
    from transformers import GenerationConfig

    try:
        generation_config = GenerationConfig.from_pretrained(str(model_path))
    except OSError:
        generation_config = None
    return stop_token_ids(tokenizer, generation_config)


class TokenizingMixin:
    """render_chat and count_tokens (srlm.engines.types.Tokenizing) from the object's `tokenizer`."""

    tokenizer: Any

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)


@dataclass(frozen=True)
class ModelTokenizer(TokenizingMixin):
    """The part of the engine interface that needs no weights: render_chat, count_tokens, max_length."""

    tokenizer: Any
    max_length: int
