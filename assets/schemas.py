"""Column contracts of every table asset (DESIGN.md section 4 names the lineage columns)."""

import polars as pl

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
    "source": pl.String,  # bootstrap | local
    "parameters": pl.Int64,
    "heldout_perplexity": pl.Float64,
    "tokens_seen": pl.Int64,
    "context_length": pl.Int64,
}
