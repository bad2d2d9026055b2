"""Generation and scoring with vLLM on GPUs, with LoRA adapters; the same interface as TransformersEngine.

vLLM is an optional dependency (`pip install -e ".[gpu]"`) and cannot run on CPU: it is imported inside
`VLLMEngine.__init__` only, so importing this module works everywhere.

- Prompts are tokenized here with the model's Hugging Face tokenizer, exactly as TransformersEngine does
  (shared helpers), and sent to vLLM as token ids, so both engines see the same tokens.
- Seeds: each prompt's request carries its own seed, derived from (params.seed, the prompt's tokens) like
  TransformersEngine's per-sequence seeds; vLLM derives the n samples of a request from it. A prompt's
  samples therefore do not depend on the other prompts of the call (one shared seed would correlate them).
  Texts are reproducible run to run with vLLM, but are not the same texts as TransformersEngine samples.
- Log-probabilities come from `prompt_logprobs` of a one-token request over context + continuation.
- Adapters: `LoRARequest` with a stable integer id per adapter path (enable_lora must be on). vLLM takes
  only a few values of max_lora_rank: `vllm_lora_rank` rounds the trained rank up to one.
- Sleep: where vLLM's platform has sleep mode, the engine is built with it, so `sleep()` can hand the GPU to
  a training step and `wake()` take it back without reloading (resources/generation.py `released`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from srlm.engines.runtime import ModelLoadError, check_causal_lm_dir, load_tokenizer, tokenizer_and_context
from srlm.engines.transformers_engine import (
    count_tokens,
    encode_pair,
    encode_prompt,
    render_chat,
    sequence_seed,
    stop_token_ids,
)
from srlm.engines.types import Completion, GenerationOutput, LogProb, Message, Prompt, SamplingParams

INSTALL_HINT = 'vLLM is not installed: install the GPU extra with `pip install -e ".[gpu]"` (needs CUDA)'
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values of max_lora_rank vLLM accepts


def vllm_lora_rank(r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves adapters of rank r (r: 12 -> 16)."""
    for rank in VLLM_LORA_RANKS:
        if r <= rank:
            return rank
    raise ValueError(
        f"LoRA rank {r} (train.lora.r) is above {VLLM_LORA_RANKS[-1]}, the largest rank vLLM serves; lower it, "
        "or generate with generation.backend: transformers"
    )


@dataclass
class VLLMEngineConfig:
    dtype: str = "auto"                 # auto (vLLM's choice from the model config) | float32 | bfloat16 | float16
    gpu_memory_utilization: float = 0.85  # share of GPU memory vLLM takes (weights + KV cache)
    tensor_parallel_size: int = 1       # GPUs per model
    max_lora_rank: int = 64             # largest LoRA rank an adapter may have
    max_model_len: int | None = None    # context length; None = the model's own
    enable_lora: bool = True            # needed to apply adapters
    max_loras: int = 4                  # adapters resident at once
    trust_remote_code: bool = False
    seed: int = 0                       # engine seed (per-request seeds decide sampling)

    def __post_init__(self) -> None:
        self.max_lora_rank = vllm_lora_rank(self.max_lora_rank)  # both VLLMEngine and ray.data.llm pass it on


class VLLMEngine:
    def __init__(self, model_path: str | os.PathLike, config: VLLMEngineConfig | None = None):
        self.config = config or VLLMEngineConfig()
        self.model_path = Path(model_path).expanduser()
        check_causal_lm_dir(self.model_path, self.config.trust_remote_code)
        try:
            import vllm  # noqa: F401  (lazy: optional GPU dependency)
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        # sleep mode puts vLLM's memory in a pool it can release; vLLM refuses it on platforms without it
        self.can_sleep = current_platform.is_sleep_mode_available()
        self.tokenizer = load_tokenizer(self.model_path, "left", self.config.trust_remote_code)
        kwargs: dict[str, Any] = dict(
            model=str(self.model_path),
            dtype=self.config.dtype,
            gpu_memory_utilization=self.config.gpu_memory_utilization,
            tensor_parallel_size=self.config.tensor_parallel_size,
            trust_remote_code=self.config.trust_remote_code,
            seed=self.config.seed,
            enable_sleep_mode=self.can_sleep,
        )
        if self.config.max_model_len:
            kwargs["max_model_len"] = self.config.max_model_len
        if self.config.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=self.config.max_lora_rank, max_loras=self.config.max_loras)
        self.llm = LLM(**kwargs)
        self._max_length = self._engine_max_length()
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(str(self.model_path))
        except OSError:
            generation_config = None
        self._stop_ids = stop_token_ids(self.tokenizer, generation_config)
        self._lora_ids: dict[str, int] = {}

    def _engine_max_length(self) -> int:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:  # an engine that does not say: the limit of the Hugging Face config
            _, limit = tokenizer_and_context(str(self.model_path), self.config.trust_remote_code)
            return min(limit, self.config.max_model_len) if self.config.max_model_len else limit

    # ------------------------------------------------------------------------------------------ sleep

    def sleep(self) -> bool:
        """Free the GPU for a training step: level 1 keeps the weights in CPU memory and drops the KV cache,
        so wake() needs no reload (level 2 drops the weights too: they would have to be loaded again).
        False where the platform has no sleep mode: the holder drops the engine instead."""
        if not self.can_sleep:
            return False
        self.llm.sleep(level=1)
        return True

    def wake(self) -> None:
        self.llm.wake_up()

    # ------------------------------------------------------------------------------------------ basics

    @property
    def max_length(self) -> int:
        return self._max_length

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def _lora(self, adapter: str | os.PathLike | None):
        if adapter is None:
            return None
        if not self.config.enable_lora:
            raise ValueError("an adapter was given but the vLLM engine was built with enable_lora: false")
        from vllm.lora.request import LoRARequest

        path = Path(adapter).expanduser().resolve()
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(f"{path} is not a peft adapter directory (no adapter_config.json)")
        key = str(path)
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1  # ids start at 1; stable for this engine's life
        lora_id = self._lora_ids[key]
        return LoRARequest(lora_name=f"adapter_{lora_id}", lora_int_id=lora_id, lora_path=key)

    @staticmethod
    def _tokens_prompt(ids: list[int]):
        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # moved in some versions
            from vllm import TokensPrompt
        return TokensPrompt(prompt_token_ids=ids)

    # -------------------------------------------------------------------------------------- generation

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None
    ) -> list[GenerationOutput]:
        from vllm import SamplingParams as VSamplingParams

        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        for i, ids in enumerate(encoded):
            if len(ids) >= self.max_length:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens: no room to generate within the model's context of "
                    f"{self.max_length} tokens"
                )
        if not encoded:
            return []
        greedy = params.temperature == 0
        request_params = [
            VSamplingParams(
                n=1 if greedy else params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=min(params.max_new_tokens, self.max_length - len(ids)),
                seed=None if greedy else sequence_seed(params.seed, ids, 0) & 0x7FFF_FFFF,
                stop=list(params.stop) or None,
                stop_token_ids=self._stop_ids,
                skip_special_tokens=True,
            )
            for ids in encoded
        ]
        outputs = self.llm.generate(
            [self._tokens_prompt(ids) for ids in encoded],
            request_params,
            use_tqdm=False,
            lora_request=self._lora(adapter),
        )
        results = []
        for i, out in enumerate(outputs):
            samples = sorted(out.outputs, key=lambda o: o.index)
            completions = [
                Completion(
                    text=s.text,
                    n_tokens=len(s.token_ids),
                    finish_reason=s.finish_reason if s.finish_reason in ("stop", "length") else str(s.finish_reason),
                )
                for s in samples
            ]
            if greedy:
                completions = completions[:1] * params.n
            results.append(GenerationOutput(prompt_index=i, completions=completions))
        return results

    # ----------------------------------------------------------------------------------------- scoring

    def logprobs(self, requests: Sequence[tuple[str, str]], adapter: str | None = None) -> list[LogProb]:
        """Sum of log p(continuation | context) per request, from vLLM's prompt log-probabilities.

        Over the context: tokens are dropped from the left so that the request (plus the one token vLLM
        must generate) fits max_length."""
        from vllm import SamplingParams as VSamplingParams

        window = self.max_length - 1
        items = []
        for context, continuation in requests:
            ctx, cont = encode_pair(self.tokenizer, context, continuation)
            full = (ctx + cont)[-window:]
            items.append((full, min(len(cont), len(full) - 1)))
        results: list[LogProb | None] = [LogProb(0.0, 0) if n == 0 else None for _, n in items]
        todo = [k for k, (_, n) in enumerate(items) if n > 0]
        if todo:
            outputs = self.llm.generate(
                [self._tokens_prompt(items[k][0]) for k in todo],
                VSamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1),
                use_tqdm=False,
                lora_request=self._lora(adapter),
            )
            for k, out in zip(todo, outputs):
                full, n = items[k]
                positions = out.prompt_logprobs
                total = 0.0
                for pos in range(len(full) - n, len(full)):
                    entry = positions[pos]
                    if not entry or full[pos] not in entry:
                        raise RuntimeError(f"vLLM returned no prompt log-probability for request {k}, position {pos}")
                    total += float(entry[full[pos]].logprob)
                results[k] = LogProb(total=total, n_tokens=n)
        return results  # type: ignore[return-value]
