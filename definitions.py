"""Dagster entry point: the Definitions of the experiment named by $SRLM_CONFIG (else the embedded default)."""

import dagster as dg

from assets import build_assets
from assets.checks import build_checks
from resources import build_resources
from srlm.config import ExperimentConfig, load_config
from srlm.progress import PROGRESS_LOGGER, progress_logger

EXPERIMENT_JOB = "experiment"


def build_definitions(cfg: ExperimentConfig) -> dg.Definitions:
    experiment = dg.define_asset_job(
        EXPERIMENT_JOB,
        selection=dg.AssetSelection.all(),
        description=f"The whole experiment '{cfg.experiment.name}': data, base model, M0 and {cfg.experiment.iterations} iterations.",
    )
    return dg.Definitions(
        assets=build_assets(cfg),
        asset_checks=build_checks(cfg),
        resources=build_resources(cfg),
        jobs=[experiment],
        loggers={"console": dg.colored_console_logger, PROGRESS_LOGGER: progress_logger},
        # steps share one process: torch and the loaded models are reused instead of re-imported per step
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_config())
