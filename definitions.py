"""Dagster entry point: the Definitions of the experiment named by $SRLM_CONFIG (else the embedded default)."""

import dagster as dg

from assets import build_assets
from assets.checks import build_checks
from assets.evaluation import COMPARISON, SCALING, SUMMARY
from assets.tables import table_key
from resources import build_resources
from srlm.arms import BASE_STAGE, Arm, chain
from srlm.config import ExperimentConfig, load_config
from srlm.progress import PROGRESS_LOGGER, progress_logger
from srlm.schemas import CHECKPOINT_TABLE, EVAL_TABLE, SELECTOR_CHOICES_TABLE

EXPERIMENT_JOB = "experiment"


def arm_job_name(arm: Arm) -> str:
    return f"arm_{arm.slug}"


def arm_jobs(cfg: ExperimentConfig) -> list:
    """One job per arm (pick it in the Launchpad): its chain, everything upstream, and the summaries."""
    jobs = []
    summaries = dg.AssetSelection.assets(SUMMARY, SCALING, COMPARISON) if cfg.eval.enabled else dg.AssetSelection.assets()
    for arm in cfg.arms:
        arm_chain = chain(arm, cfg.experiment.iterations)
        last = {table_key(CHECKPOINT_TABLE, stage) for stage in arm_chain}
        last |= {table_key(SELECTOR_CHOICES_TABLE, stage) for stage in arm_chain if stage.generation_schema}
        if cfg.eval.enabled:
            last |= {table_key(EVAL_TABLE, stage) for stage in [BASE_STAGE, *arm_chain]}
        jobs.append(
            dg.define_asset_job(
                arm_job_name(arm),
                selection=(dg.AssetSelection.assets(*last).upstream() | summaries).required_multi_asset_neighbors(),
                description=f"Only the arm {arm.name}: its checkpoints and evaluations, and what they need.",
            )
        )
    return jobs


def build_definitions(cfg: ExperimentConfig) -> dg.Definitions:
    experiment = dg.define_asset_job(
        EXPERIMENT_JOB,
        selection=dg.AssetSelection.all(),
        description=(
            f"The whole experiment '{cfg.experiment.name}': data, base model, the arms "
            f"{', '.join(a.name for a in cfg.arms)} ({cfg.experiment.iterations} iterations each) and their evaluations."
        ),
    )
    return dg.Definitions(
        assets=build_assets(cfg),
        asset_checks=build_checks(cfg),
        resources=build_resources(cfg),
        jobs=[experiment, *arm_jobs(cfg)],
        loggers={"console": dg.colored_console_logger, PROGRESS_LOGGER: progress_logger},
        # steps share one process: torch and the loaded models are reused instead of re-imported per step
        executor=dg.in_process_executor,
    )


defs = build_definitions(load_config())
