"""Column contracts of every table asset (docs/design.md, "Contracts", names the lineage columns), and each
per-stage table described once: its key, columns, key columns and union view.

Frames are built with `frame`, so an empty table still has its columns and types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import polars as pl
import pyarrow as pa

from srlm import registry
from srlm.arms import Stage
from srlm.expansion import CANDIDATE_SCHEMA
from srlm.scoring import score_schema

INSTRUCTIONS = {
    "example_id": pl.String,
    "source": pl.String,
    "source_row": pl.Int64,
    "instruction": pl.String,
    "input": pl.String,
    "output": pl.String,
    "rationale": pl.String,
    "n_tokens": pl.Int64,
}

CATALYST = {
    "catalyst_id": pl.String,
    "source": pl.String,
    "source_row": pl.Int64,
    "instruction": pl.String,
    "input": pl.String,
    "short_rationale": pl.String,  # r0
    "output": pl.String,  # y
    "rationale": pl.String,  # r*
    "skills": pl.String,  # skills marked in r*, comma-separated
    "n_tokens": pl.Int64,
}

REJECTED = {
    "source": pl.String,
    "source_row": pl.Int64,
    "example_id": pl.String,
    "reason": pl.String,
    "raw": pl.String,  # the row as JSON, so nothing is lost
}

TRAINING_EXAMPLES = {
    "arm": pl.String,  # sft | srlm (M0) | srlm/<selector> | self_train/<selector>
    "iteration": pl.Int64,
    "task": pl.String,  # "answer" (x -> <think>r</think> y) | "enrich" ((x, r0, y) -> r*)
    "example_id": pl.String,  # D0 example_id, or catalyst_id for enrich rows
    "rationale_id": pl.String,  # the rationale trained on: a selected candidate_id, or the example_id (original)
    "rationale_iteration": pl.Int64,  # iteration whose selection wrote that rationale (0 = the original data)
    "instruction": pl.String,
    "input": pl.String,
    "rationale": pl.String,
    "response": pl.String,
    "prompt": pl.String,
    "completion": pl.String,
}

CHECKPOINTS = {
    "checkpoint_id": pl.String,
    "arm": pl.String,  # base | sft | srlm (M0) | srlm/<selector> | self_train/<selector>
    "iteration": pl.Int64,  # -1 = the base model
    "base_model": pl.String,  # checkpoint_id of the base model
    "path": pl.String,
    "trained_on": pl.String,  # data version (content fingerprint) of the training table
    "train_loss": pl.Float64,
    "run_id": pl.String,
    "init": pl.String,  # base | previous | pretrained (base model rows)
    "parent_checkpoint_id": pl.String,
    "n_examples": pl.Int64,
    "steps": pl.Int64,
    "seconds": pl.Float64,
    "truncated_examples": pl.Int64,
}

BASE_MODEL_EXTRA = {
    "source": pl.String,  # bootstrap | preset | gguf | local
    "parameters": pl.Int64,
    "heldout_perplexity": pl.Float64,
    "tokens_seen": pl.Int64,
    "context_length": pl.Int64,
}

QUESTIONS = {
    "benchmark": pl.String,
    "question_id": pl.String,
    "subset": pl.String,  # MMLU subject, BBH task
    "question": pl.String,
    "choices": pl.List(pl.String),
    "labels": pl.List(pl.String),
    "answer": pl.String,  # gold answer (a label for multiple choice)
    "gold_index": pl.Int64,
    "protocol": pl.String,  # generate | loglikelihood
    "sampled": pl.Boolean,  # evaluated (inside the per-benchmark limit)
}

EVALS = {
    "checkpoint_id": pl.String,
    "arm": pl.String,  # base | sft | srlm (M0) | srlm/<selector> | self_train/<selector>
    "iteration": pl.Int64,  # -1 = the base model
    "benchmark": pl.String,
    "question_id": pl.String,
    "protocol": pl.String,
    "n_samples": pl.Int64,  # N: the prediction is the majority vote of the first N sampled answers
    "prediction": pl.String,
    "correct": pl.Boolean,
    "gold": pl.String,
    # generate: the first of the N sampled completions whose answer is the vote (the first one when none was
    # read); loglikelihood: the chosen option's text
    "completion": pl.String,
    "sample_predictions": pl.List(pl.String),  # the N extracted answers that voted
    "choice_logprobs": pl.List(pl.Float64),  # loglikelihood: total log p of each option
    # loglikelihood: lm-evaluation-harness's acc_norm choice (total log p / the option's length in characters)
    # and whether it is right; null for generate
    "prediction_norm": pl.String,
    "correct_norm": pl.Boolean,
}

SELECTED = {
    "example_id": pl.String,
    "arm": pl.String,  # the arm whose next checkpoint trains on the choice (selector_choices: who generated)
    "iteration": pl.Int64,
    "candidate_id": pl.String,  # the kept candidate
    "selector": pl.String,
    "score": pl.Float64,
    "parent_score": pl.Float64,  # the same selector's score of the rationale it enriched
    "parent_id": pl.String,
    "margin": pl.Float64,
}

EVAL_SUMMARY = {
    "checkpoint_id": pl.String,
    "arm": pl.String,
    "iteration": pl.Int64,
    "benchmark": pl.String,
    "protocol": pl.String,
    "questions": pl.Int64,
    "accuracy": pl.Float64,  # at the smallest N (1 by default)
    "accuracy_low": pl.Float64,  # 95% Wilson interval of the accuracy
    "accuracy_high": pl.Float64,
    "accuracy_norm": pl.Float64,  # lm-evaluation-harness's acc_norm (loglikelihood benchmarks; null for generate)
    "max_samples": pl.Int64,
    "accuracy_at_max_samples": pl.Float64,
    "delta_base": pl.Float64,  # against the base model
}

EVAL_COMPARISON = {
    "checkpoint_id": pl.String,
    "checkpoint": pl.String,  # label: sft, M0, "M2 srlm/likelihood"
    "arm": pl.String,
    "iteration": pl.Int64,
    "reference_checkpoint_id": pl.String,
    "reference": pl.String,
    "relation": pl.String,  # vs_sft | vs_previous | vs_self_train
    "benchmark": pl.String,
    "n_samples": pl.Int64,
    "metric": pl.String,  # acc | acc_norm (loglikelihood benchmarks)
    "questions": pl.Int64,  # questions both answered (paired)
    "accuracy": pl.Float64,
    "reference_accuracy": pl.Float64,
    "difference": pl.Float64,  # accuracy - reference_accuracy
    "ci_low": pl.Float64,  # 95% paired bootstrap interval of the difference
    "ci_high": pl.Float64,
    "p_value": pl.Float64,  # exact McNemar
    "verdict": pl.String,  # better | worse | no detectable difference (the interval excludes 0 or not)
    "min_detectable_difference": pl.Float64,  # smallest |difference| detectable at this n with 80% power
    "sentence": pl.String,
}

EVAL_SCALING = {
    "checkpoint_id": pl.String,
    "arm": pl.String,
    "iteration": pl.Int64,
    "benchmark": pl.String,
    "n_samples": pl.Int64,
    "questions": pl.Int64,
    "accuracy": pl.Float64,
}



def _from_arrow(schema: pa.Schema) -> dict:
    return dict(pl.from_arrow(schema.empty_table()).schema)


CANDIDATES = _from_arrow(CANDIDATE_SCHEMA)


def scores_columns() -> dict:
    """The scores table's columns: one per registered selector among them."""
    return _from_arrow(score_schema())


def frame(rows: Iterable[Mapping[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Rows -> DataFrame with a fixed schema (an empty table still has its columns and types)."""
    return pl.DataFrame(list(rows), schema=dict(schema))


# ------------------------------------------------------------------------------------- tables, described once


@dataclass(frozen=True)
class Table:
    """A table asset's contract: its columns, and the columns that must never be null. A stage table (one
    with a `name`) is written by every stage, keyed `<schema>/<name>`, and its rows of every arm and
    iteration are one union view, sql/views/<view>.sql (docs/design.md, "SQL names")."""

    columns_of: Callable[[], dict]
    keys: tuple[str, ...]
    name: str | None = None
    view: str | None = None
    generation: bool = False  # in the stage's generation schema (shared by the SRLM arms at t = 1), t >= 1

    @property
    def columns(self) -> dict:
        return self.columns_of()

    def key(self, stage: Stage) -> tuple[str, str]:
        return registry.table_key(stage.generation_schema if self.generation else stage.schema, self.name)


def _fixed(columns: dict) -> Callable[[], dict]:
    return lambda: columns


TRAINING_EXAMPLES_TABLE = Table(_fixed(TRAINING_EXAMPLES), ("example_id", "task", "prompt", "completion"), "training_examples", "training_examples")
CHECKPOINT_TABLE = Table(_fixed(CHECKPOINTS), ("checkpoint_id", "path", "trained_on", "base_model"), "checkpoint", "checkpoints")
CANDIDATES_TABLE = Table(_fixed(CANDIDATES), ("candidate_id", "example_id", "parent_id", "checkpoint_id"), "candidates", "candidates", True)
SCORES_TABLE = Table(scores_columns, ("candidate_id", "example_id", "role"), "scores", "scores", True)
# every selector's pick: the rows of `selected`, once per selector
SELECTOR_CHOICES_TABLE = Table(_fixed(SELECTED), ("example_id", "candidate_id", "selector"), "selector_choices", "selector_choices", True)
SELECTED_TABLE = Table(_fixed(SELECTED), ("example_id", "candidate_id", "selector"), "selected", "selected")
EVAL_TABLE = Table(_fixed(EVALS), ("checkpoint_id", "question_id", "n_samples"), "eval", "evals")

STAGE_TABLES = (TRAINING_EXAMPLES_TABLE, CHECKPOINT_TABLE, CANDIDATES_TABLE, SCORES_TABLE, SELECTOR_CHOICES_TABLE, SELECTED_TABLE, EVAL_TABLE)


def stage_tables(stage: Stage) -> tuple[Table, ...]:
    """The tables of a stage (its evaluation aside): its training set and checkpoint, and from t = 1 its
    selection and the generation it selects from (a shared generation is listed by each of its stages)."""
    every = (TRAINING_EXAMPLES_TABLE, CHECKPOINT_TABLE)
    return every + ((CANDIDATES_TABLE, SCORES_TABLE, SELECTOR_CHOICES_TABLE, SELECTED_TABLE) if stage.iteration >= 1 else ())

# the tables outside the stages, by key
FIXED_TABLES = {
    registry.INSTRUCTIONS: Table(_fixed(INSTRUCTIONS), ("example_id", "instruction", "output")),
    registry.INSTRUCTIONS_REJECTED: Table(_fixed(REJECTED), ("source", "reason", "raw")),
    registry.CATALYST: Table(_fixed(CATALYST), ("catalyst_id", "instruction", "output", "rationale")),
    registry.CATALYST_REJECTED: Table(_fixed(REJECTED), ("source", "reason", "raw")),
    registry.BASE_MODEL: Table(_fixed({**CHECKPOINTS, **BASE_MODEL_EXTRA}), ("checkpoint_id", "path")),
}
EVAL_TABLES = {
    registry.QUESTIONS: Table(_fixed(QUESTIONS), ("benchmark", "question_id", "answer")),
    registry.SUMMARY: Table(_fixed(EVAL_SUMMARY), ("checkpoint_id", "benchmark")),
    registry.SCALING: Table(_fixed(EVAL_SCALING), ("checkpoint_id", "benchmark", "n_samples")),
    registry.COMPARISON: Table(_fixed(EVAL_COMPARISON), ("checkpoint_id", "reference_checkpoint_id", "benchmark", "verdict")),
}
