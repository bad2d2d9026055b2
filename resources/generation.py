"""Generation resource: hands out model engines (transformers | vllm | openai-compatible), one per model
per process, so the in-process executor loads each model once per run; and the runners that generate and
score for the assets: that engine itself (executor `local`), or an engine whose every call is a Ray Data
job (executor `ray`, srlm/distributed.py).

On one GPU the vLLM engine and the trainer take turns: what only counts tokens or renders prompts gets the
model's tokenizer (`tokenizer`), never an engine, and a training step runs inside `released()`, which puts
the engines to sleep and wakes them afterwards."""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Optional

import dagster as dg

from srlm.checkpoints import local_checkpoint
from srlm.config import ExperimentConfig
from srlm.storage import Storage

if TYPE_CHECKING:
    from srlm.engines.openai_engine import OpenAIChatEngine
    from srlm.engines.tokenization import ModelTokenizer
    from srlm.engines.types import Engine


def _free_gpu_memory() -> None:
    """Collect what is no longer referenced and hand this process's cached CUDA blocks back to the device:
    vLLM's engine runs in a process of its own, which cannot use them otherwise."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()  # nothing to do where CUDA was never initialized


class GenerationResource(dg.ConfigurableResource):
    """Local engines run the base model (plus a LoRA adapter per call); `teacher` reaches an
    OpenAI-compatible chat endpoint or a local model."""

    # every field comes from the experiment config (from_config), which holds their defaults and bounds
    backend: Literal["transformers", "vllm"]
    device: str
    dtype: str
    batch_size: int
    trust_remote_code: bool
    gpu_memory_utilization: float
    tensor_parallel_size: int
    lora_rank: int  # train.lora.r: the rank of the adapters vLLM serves
    executor: Literal["local", "ray"]
    ray_address: Optional[str]
    ray_num_cpus: Optional[int]
    ray_actors: int
    ray_cpus_per_actor: Optional[int]

    _engines: ClassVar[dict[tuple, Any]] = {}

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> GenerationResource:
        model, generation, executor = cfg.model, cfg.generation, cfg.executor
        return cls(
            backend=generation.backend, batch_size=generation.batch_size,
            gpu_memory_utilization=generation.gpu_memory_utilization, tensor_parallel_size=generation.tensor_parallel_size,
            device=model.device, dtype=model.dtype, trust_remote_code=model.trust_remote_code, lora_rank=cfg.train.lora.r,
            executor=executor.kind, ray_address=executor.address, ray_num_cpus=executor.num_cpus,
            ray_actors=executor.actors, ray_cpus_per_actor=executor.cpus_per_actor,
        )

    def engine(self, model_path: str) -> Engine:
        """The local engine for a base model directory."""
        key = (self.backend, model_path, self.device, self.dtype, self.batch_size, self.trust_remote_code)
        if key not in self._engines:
            self._engines[key] = self._build(model_path)
        return self._engines[key]

    def tokenizer(self, model_path: str) -> ModelTokenizer:
        """What counting tokens and rendering prompts need of a model (srlm.engines.types.Tokenizing), without
        loading it (a vLLM engine would take most of the GPU for that)."""
        from srlm.engines.runtime import tokenizer_and_context
        from srlm.engines.tokenization import ModelTokenizer

        return ModelTokenizer(*tokenizer_and_context(str(model_path), self.trust_remote_code))

    def context_length(self, model_path: str) -> int:
        """A base model's usable context, checking that it is a causal LM that loads. Transformers loads the
        engine (the run's generation reuses it); vLLM checks the directory, tokenizer and config only, since
        its engine would hold the GPU from here to the first training step."""
        if self.backend == "vllm":
            from srlm.engines.runtime import check_causal_lm_dir

            check_causal_lm_dir(model_path, self.trust_remote_code)
            return self.tokenizer(model_path).max_length
        return self.engine(model_path).max_length

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """The GPU for the block (a training step): every cached engine that can sleep (vLLM) sleeps and wakes
        when the block ends; one that cannot is dropped and rebuilt on its next use. Engines without sleep
        (transformers) reserve nothing beyond their weights and stay as they are."""
        asleep, freed = [], False
        for key, engine in list(self._engines.items()):
            if not hasattr(engine, "sleep"):
                continue
            freed = True
            if engine.sleep():
                asleep.append(engine)
            else:
                del self._engines[key]
        if freed:
            _free_gpu_memory()  # a dropped engine's memory, once collected
        try:
            yield
        finally:
            if freed:
                _free_gpu_memory()  # the trainer's, so that the engines can take theirs back
            for engine in asleep:
                engine.wake()

    def _build(self, model_path: str) -> Engine:
        if self.backend == "vllm":
            from srlm.engines.vllm_engine import VLLMEngine

            _free_gpu_memory()  # vLLM starts only if its share of the device is free: this process's cache first
            return VLLMEngine(model_path, self._engine_settings())
        from srlm.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_path, self._engine_settings())

    def _engine_settings(self) -> Any:
        """The backend's engine settings (a VLLMEngineSettings or a TransformersEngineSettings)."""
        if self.backend == "vllm":
            from srlm.engines.vllm_engine import VLLMEngineSettings

            return VLLMEngineSettings(
                self.dtype, self.gpu_memory_utilization, self.tensor_parallel_size, self.lora_rank, self.trust_remote_code
            )
        from srlm.engines.transformers_engine import TransformersEngineSettings

        return TransformersEngineSettings(
            device=self.device, dtype=self.dtype, batch_size=self.batch_size, trust_remote_code=self.trust_remote_code
        )

    # ------------------------------------------------------------------------------------------ runners

    def runner(self, model_path: str, storage: Storage, output: str) -> Engine:
        """What generates and scores for an asset: the local engine, or with the ray executor an engine whose
        every call is a Ray Data job writing its rows under `output` on `storage` (a rerun skips the rows already
        there)."""
        if self.executor == "local":
            return self.engine(model_path)
        from srlm.distributed import RayEngine, RaySettings

        settings = RaySettings(self.ray_address, self.ray_num_cpus, self.ray_actors, self.ray_cpus_per_actor)
        return RayEngine(model_path, self.backend, self._engine_settings(), settings, storage, output, self.batch_size)

    def adapter(self, path: str, storage: Storage, home: str) -> str:
        """The adapter path a runner takes for a committed checkpoint: a local folder for the local engines
        (fetched into the home's cache from an object store); the stored path itself for Ray, whose actors
        fetch it on their own nodes."""
        return path if self.executor == "ray" else local_checkpoint(path, storage, home)

    def job_metadata(self, runner: Engine) -> dict[str, Any]:
        """The Ray jobs a runner ran, for the materialization (nothing for a local engine)."""
        from srlm.distributed import job_metadata

        meta = job_metadata(runner)
        if "ray/output" in meta:
            meta["ray/output"] = dg.MetadataValue.path(meta["ray/output"])
        return meta

    def teacher(
        self, backend: str, model: str, base_url: Optional[str] = None, api_key_env: Optional[str] = None
    ) -> OpenAIChatEngine | Engine:
        """A teacher engine: an OpenAI-compatible endpoint (generation only), or a local model directory."""
        if backend == "openai":
            from srlm.engines.openai_engine import OpenAIChatEngine, OpenAIEngineSettings

            return OpenAIChatEngine(OpenAIEngineSettings(base_url=base_url, model=model, api_key_env=api_key_env))
        return self.engine(model)
