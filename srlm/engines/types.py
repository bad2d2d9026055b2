"""The engine interface every backend speaks (modelled on vLLM's `LLM`: engine + sampling params + typed outputs).

A prompt is either a raw string (sent to the model as is) or a chat: a list of
``{"role": ..., "content": ...}`` messages, rendered with the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, Union

Message = dict[str, str]
Prompt = Union[str, Sequence[Message]]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding (then n > 1 repeats the same text)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. finish_reason is "stop" (end of turn / stop string) or "length"."""

    text: str
    n_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class GenerationOutput:
    """All n completions of one prompt, in sample order."""

    prompt_index: int
    completions: list[Completion] = field(default_factory=list)


@dataclass(frozen=True)
class LogProb:
    """Log-probability of a continuation given a context: sum over its tokens, and the token count."""

    total: float
    n_tokens: int

    @property
    def mean(self) -> float:
        return self.total / self.n_tokens if self.n_tokens else 0.0


class Tokenizing(Protocol):
    """What needs only the model's tokenizer: rendering chats and counting tokens (no weights loaded)."""

    max_length: int  # usable context in tokens

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


class Engine(Tokenizing, Protocol):
    """The one engine interface assets and pure functions are written against: the transformers and vLLM
    engines, the Ray executor's engine, an OpenAI-compatible endpoint (generation only) and the tests' fake."""

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[GenerationOutput]: ...

    def logprobs(self, requests: Sequence[tuple[str, str]], adapter: str | None = None) -> list[LogProb]: ...
