"""The row of a checkpoints table, and what its asset reports, from what training returned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from srlm.arms import Stage

if TYPE_CHECKING:  # srlm.training imports torch
    from srlm.training import TrainReport


def checkpoint_prefix(stage: Stage) -> str:
    """How a stage's checkpoint ids start: "sft", or "M<t>"."""
    return "sft" if stage.arm == "sft" else f"M{stage.iteration}"


def checkpoint_row(
    checkpoint_id: str,
    stage: Stage,
    base: Mapping,
    path: str,
    trained_on: str,
    report: TrainReport,
    run_id: str,
    previous: Mapping | None,
    n_examples: int,
) -> dict:
    """One checkpoint: where it is, what it was trained on and from (`base`: the base model's row; `previous`:
    the row of the checkpoint it continued, None when it started from the base model)."""
    return {
        "checkpoint_id": checkpoint_id,
        "arm": stage.arm,
        "iteration": stage.iteration,
        "base_model": base["checkpoint_id"],
        "path": path,
        "trained_on": trained_on,
        "train_loss": report.final_loss,
        "run_id": run_id,
        "init": "previous" if previous is not None else "base",
        "parent_checkpoint_id": previous["checkpoint_id"] if previous is not None else None,
        "n_examples": n_examples,
        "steps": report.steps,
        "seconds": report.seconds,
        "truncated_examples": report.truncated,
    }


def checkpoint_metadata(checkpoint_id: str, report: TrainReport) -> dict:
    return {
        "checkpoint_id": checkpoint_id,
        "train_loss": report.final_loss,
        "steps": report.steps,
        "seconds": round(report.seconds, 1),
        "loss_curve": [round(x, 4) for x in report.loss_curve],
    }
