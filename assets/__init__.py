"""Software-defined assets, one module per stage; iteration assets come from a factory."""


import dagster as dg

from assets.data import build_data_assets
from assets.evaluation import build_evaluation_assets
from assets.iteration import build_iteration_assets
from assets.model import build_model_assets
from srlm.config import ExperimentConfig


def build_assets(cfg: ExperimentConfig) -> list[dg.AssetsDefinition]:
    return [*build_model_assets(cfg), *build_data_assets(cfg), *build_iteration_assets(cfg), *build_evaluation_assets(cfg)]
