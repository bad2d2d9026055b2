"""Dagster resources: generation engines, LoRA training, and the Parquet + DuckDB warehouse."""

from __future__ import annotations

from resources.generation import GenerationResource
from resources.training import TrainingResource
from resources.warehouse import ParquetIOManager, WarehouseResource
from srlm.config import ExperimentConfig


def build_resources(cfg: ExperimentConfig) -> dict[str, object]:
    place = {"home": str(cfg.home), "storage_root": cfg.paths.storage, "storage_options": cfg.paths.storage_options}
    return {
        "io_manager": ParquetIOManager(**place),
        "warehouse": WarehouseResource(**place),
        "generation": GenerationResource.from_config(cfg),
        "training": TrainingResource(device=cfg.model.device, dtype=cfg.model.dtype),
    }


__all__ = ["GenerationResource", "TrainingResource", "ParquetIOManager", "WarehouseResource", "build_resources"]
