"""Generation resource: hands out model engines (transformers | vllm | openai-compatible), one per model
per process, so the in-process executor loads each model once per run."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import dagster as dg


class GenerationResource(dg.ConfigurableResource):
    """Local engines run the base model (plus a LoRA adapter per call); `teacher` reaches an
    OpenAI-compatible chat endpoint or a local model."""

    backend: Literal["transformers", "vllm"] = "transformers"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    trust_remote_code: bool = False
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    max_lora_rank: int = 64

    _engines: ClassVar[dict[tuple, Any]] = {}

    def engine(self, model_path: str) -> Any:
        """The local engine for a base model directory (generate, logprobs, render_chat, count_tokens)."""
        key = (self.backend, model_path, self.device, self.dtype, self.batch_size, self.trust_remote_code)
        if key not in self._engines:
            self._engines[key] = self._build(model_path)
        return self._engines[key]

    def _build(self, model_path: str) -> Any:
        if self.backend == "vllm":
            from srlm.engines.vllm_engine import VLLMEngine, VLLMEngineConfig

            return VLLMEngine(
                model_path,
                VLLMEngineConfig(
                    dtype=self.dtype,
                    gpu_memory_utilization=self.gpu_memory_utilization,
                    tensor_parallel_size=self.tensor_parallel_size,
                    max_lora_rank=self.max_lora_rank,
                    trust_remote_code=self.trust_remote_code,
                ),
            )
        from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

        return TransformersEngine(
            model_path,
            TransformersEngineConfig(
                device=self.device, dtype=self.dtype, batch_size=self.batch_size, trust_remote_code=self.trust_remote_code
            ),
        )

    def teacher(self, backend: str, model: str, base_url: Optional[str] = None, api_key_env: Optional[str] = None) -> Any:
        """A teacher engine: an OpenAI-compatible endpoint, or a local model directory."""
        if backend == "openai":
            from srlm.engines.openai_engine import OpenAIChatEngine, OpenAIEngineConfig

            return OpenAIChatEngine(OpenAIEngineConfig(base_url=base_url, model=model, api_key_env=api_key_env))
        return self.engine(model)
