"""Generation and scoring with vLLM on GPUs, with LoRA adapters; the same interface as TransformersEngine.

vLLM is an optional dependency (`pip install -e ".[gpu]"`) and cannot run on CPU: it is imported inside
`VLLMEngine.__init__` only, so importing this module works everywhere.

- Prompts are tokenized here with the model's Hugging Face tokenizer, exactly as TransformersEngine does
  (srlm/engines/tokenization.py), and sent to vLLM as token ids, so both engines see the same tokens.
- Seeds: each prompt's request carries its own seed, derived from (params.seed, the prompt's tokens) like
  TransformersEngine's per-sequence seeds; vLLM derives the n samples of a request from it. A prompt's
  samples therefore do not depend on the other prompts of the call (one shared seed would correlate them).
  Texts are reproducible run to run with vLLM, but are not the same texts as TransformersEngine samples.
- Log-probabilities come from `prompt_logprobs` of a one-token request over context + continuation.
- Adapters: `LoRARequest` with a stable integer id per adapter path (LoRA is always enabled, MAX_LORAS
  resident at once). vLLM takes only a few values of max_lora_rank: `srlm.config.vllm_lora_rank` rounds the
  trained rank up to one.
- Sleep: where vLLM's platform has sleep mode, the engine is built with it, so `sleep()` can hand the GPU to
  a training step and `wake()` take it back without reloading (resources/generation.py `released`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from srlm.config import vllm_lora_rank
from srlm.engines.runtime import adapter_dir, check_causal_lm_dir, load_tokenizer, tokenizer_and_context
from srlm.engines.tokenization import (
    TokenizingMixin,
    encode_prompts,
    model_stop_ids,
    scoring_window,
    sequence_seed,
)
from srlm.engines.types import Completion, GenerationOutput, LogProb, Prompt, SamplingParams

INSTALL_HINT = 'vLLM is not installed: install the GPU extra with `pip install -e ".[gpu]"` (needs CUDA)'
MAX_LORAS = 4  # adapters resident at once
ENGINE_SEED = 0  # vLLM's engine seed; each request's own seed decides its samples


@dataclass(frozen=True)
class VLLMEngineSettings:
    """What the engine is built with (resources/generation.py fills it from the experiment config)."""

    dtype: str  # model.dtype: auto (vLLM's choice from the model config) | float32 | bfloat16 | float16
    gpu_memory_utilization: float  # generation.gpu_memory_utilization: share of GPU memory vLLM takes
    tensor_parallel_size: int  # generation.tensor_parallel_size: GPUs per model
    lora_rank: int  # train.lora.r: the rank of the adapters it serves
    trust_remote_code: bool  # model.trust_remote_code

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM's engine arguments (VLLMEngine's LLM, and ray.data.llm's processor in srlm/ray_vllm.py)."""
        return dict(
            dtype=self.dtype,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
            trust_remote_code=self.trust_remote_code,
            seed=ENGINE_SEED,
            enable_lora=True,
            max_lora_rank=vllm_lora_rank(self.lora_rank),
            max_loras=MAX_LORAS,
        )


def vllm_seed(params: SamplingParams, ids: list[int], sample_index: int) -> int | None:
    """A request's seed: the transformers engine's per-sequence seed cut to the 31 bits vLLM takes; none when
    greedy."""
    return None if params.temperature == 0 else sequence_seed(params.seed, ids, sample_index) & 0x7FFF_FFFF


class VLLMEngine(TokenizingMixin):
    """A model on vLLM, behind the engine interface (srlm.engines.types.Engine)."""

    def __init__(self, model_path: str | os.PathLike, settings: VLLMEngineSettings):
        self.settings = settings
        self.model_path = Path(model_path).expanduser()
        check_causal_lm_dir(self.model_path, settings.trust_remote_code)
        try:
            import vllm  # noqa: F401  (lazy: optional GPU dependency)
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        # sleep mode puts vLLM's memory in a pool it can release; vLLM refuses it on platforms without it
        self.can_sleep = current_platform.is_sleep_mode_available()
        self.tokenizer = load_tokenizer(self.model_path, "left", settings.trust_remote_code)
        self.llm = LLM(model=str(self.model_path), enable_sleep_mode=self.can_sleep, **settings.engine_kwargs())
        self._max_length = self._engine_max_length()
        self._stop_ids = model_stop_ids(str(self.model_path), self.tokenizer)
        self._lora_ids: dict[str, int] = {}

    def _engine_max_length(self) -> int:
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except AttributeError:  # an engine that does not say: the limit of the Hugging Face config
            return tokenizer_and_context(str(self.model_path), self.settings.trust_remote_code)[1]

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

    def _lora(self, adapter: str | os.PathLike | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        key = str(adapter_dir(adapter))
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

        encoded = encode_prompts(self.tokenizer, prompts, self.max_length)
        if not encoded:
            return []
        greedy = params.temperature == 0
        request_params = [
            VSamplingParams(
                n=1 if greedy else params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=min(params.max_new_tokens, self.max_length - len(ids)),
                seed=vllm_seed(params, ids, 0),
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

        items = [scoring_window(self.tokenizer, context, continuation, self.max_length - 1) for context, continuation in requests]
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
