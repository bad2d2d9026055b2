"""Dagster resources: generation engines, LoRA training, and the Parquet + DuckDB warehouse."""

from __future__ import annotations

from resources.generation import GenerationResource
from resources.training import TrainingResource
from resources.warehouse import ParquetIOManager, WarehouseResource
from srlm.config import ExperimentConfig


def build_resources(config: ExperimentConfig) -> dict[str, object]:
    from srlm.engines.vllm_engine import vllm_lora_rank  # lazily, like the engines: it imports torch

    rank = config.train.lora.r
    place = {"home": str(config.home), "storage_root": config.paths.storage, "storage_options": config.paths.storage_options}
    return {
        "io_manager": ParquetIOManager(**place),
        "warehouse": WarehouseResource(**place),
        "generation": GenerationResource(
            backend=config.generation.backend,
            device=config.model.device,
            dtype=config.model.dtype,
            batch_size=config.generation.batch_size,
            trust_remote_code=config.model.trust_remote_code,
            gpu_memory_utilization=config.generation.gpu_memory_utilization,
            tensor_parallel_size=config.generation.tensor_parallel_size,
            # vLLM takes a few ranks only: the trained one rounded up (one above vLLM's largest fails here, at load)
            max_lora_rank=vllm_lora_rank(rank) if config.generation.backend == "vllm" else rank,
            executor=config.executor.kind,
            ray_address=config.executor.address,
            ray_num_cpus=config.executor.num_cpus,
            ray_actors=config.executor.actors,
            ray_cpus_per_actor=config.executor.cpus_per_actor,
        ),
        "training": TrainingResource(device=config.model.device, dtype=config.model.dtype),
    }


__all__ = ["GenerationResource", "TrainingResource", "ParquetIOManager", "WarehouseResource", "build_resources"]
