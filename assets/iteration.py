"""The self-improvement loop, unrolled by a factory: iter_0 (M0), then iter_1 .. iter_T.

    iter_0/training_examples -> iter_0/checkpoint
    iter_t/candidates -> iter_t/scores -> iter_t/selected -> iter_t/training_examples -> iter_t/checkpoint
                                        -> iter_t/selector_choices (every selector's pick, for comparison)

iter_t/candidates depends on iter_{t-1}/checkpoint (the model that enriches) and on
iter_{t-1}/training_examples (each example's current rationale: the parent of its candidates).
M_t trains on all of D0 with, per example, the newest selected rationale (examples not selected at t keep
their previous one, so a subset expansion never shrinks the training set), plus the catalyst.
"""


import random
from enum import Enum
from pathlib import Path
from typing import Optional

import dagster as dg
import polars as pl
from pydantic import Field, create_model

from assets import schemas
from assets.data import BASE_MODEL, CATALYST, INSTRUCTIONS
from assets.tables import code_version, fingerprint, frame, table_output
from resources import GenerationResource, TrainingResource, WarehouseResource
from srlm import plots, prompts
from srlm.checkpoints import checkpoint_id_for, commit_dir
from srlm.config import SELECTORS, ExperimentConfig
from srlm.engines.types import SamplingParams
from srlm.expansion import ExpansionSettings, ExpansionTask, expand, recipe_key
from srlm.scoring import Reference, Scorable, score
from srlm.story import rationale_story
from srlm.selection import count_examples, select_best, select_with_every_selector, selection_sql_version

Selector = Enum("Selector", {name: name for name in SELECTORS}, type=str)


def key(iteration: int, name: str) -> dg.AssetKey:
    return dg.AssetKey([f"iter_{iteration}", name])


def expand_config_class(cfg: ExperimentConfig) -> type[dg.Config]:
    """Launchpad knobs of iter_t/candidates; defaults come from the experiment config."""
    e = cfg.expand
    return create_model(
        "ExpandConfig",
        __base__=dg.Config,
        candidates=(int, Field(default=e.candidates, ge=1, le=1024, description="N: candidates per example")),
        temperature=(float, Field(default=e.temperature, ge=0, le=10, description="sampling temperature (0 = greedy)")),
        top_p=(float, Field(default=e.top_p, gt=0, le=1, description="nucleus sampling mass, in (0, 1]")),
        max_new_tokens=(int, Field(default=e.max_new_tokens, ge=1, description="longest candidate rationale, in tokens")),
    )


def select_config_class(cfg: ExperimentConfig) -> type[dg.Config]:
    """Launchpad knobs of iter_t/selected; defaults come from the experiment config."""
    s = cfg.select
    return create_model(
        "SelectConfig",
        __base__=dg.Config,
        selector=(Selector, Field(default=Selector(s.selector), description="length | likelihood | consistency")),
        margin=(
            Optional[float],
            Field(default=s.margin, ge=0, description="keep a winner only if it beats its parent by more than this (empty: always)"),
        ),
    )


def expansion_subset(example_ids: list[str], size: int | None, seed: int) -> list[str]:
    """The examples enriched every iteration: the same seeded subset each time, so chains grow deep."""
    ordered = sorted(example_ids)
    if size is None or size >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, size))


def answer_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("task") == "answer")


def build_iteration_assets(cfg: ExperimentConfig) -> list[dg.AssetsDefinition]:
    assets = [_initial_training_examples(), _checkpoint(cfg, 0)]
    for t in range(1, cfg.experiment.iterations + 1):
        assets += [
            _candidates(cfg, t),
            _scores(cfg, t),
            _selected(cfg, t),
            _selector_choices(cfg, t),
            _training_examples(t),
            _checkpoint(cfg, t),
        ]
    return assets


def _training_metadata(df: pl.DataFrame) -> dict:
    answers = answer_rows(df)
    with_rationale = answers.filter(pl.col("rationale") != "")
    return {
        "answer_examples": answers.height,
        "enrich_examples": df.height - answers.height,
        "answers_with_rationale": with_rationale.height,
        "mean_rationale_chars": float(with_rationale["rationale"].str.len_chars().mean() or 0.0),
    }


# ----------------------------------------------------------------------------------------------- training sets


def _initial_training_examples() -> dg.AssetsDefinition:
    @dg.asset(
        key=key(0, "training_examples"),
        ins={"instructions": dg.AssetIn(INSTRUCTIONS), "catalyst": dg.AssetIn(CATALYST), "base": dg.AssetIn(BASE_MODEL)},
        group_name="iter_0",
        kinds={"polars", "parquet"},
        description="M0's training set: answering on D0 (with whatever rationale D0 has) plus enriching on the catalyst C.",
        code_version=code_version(prompts.ANSWER_FORMAT_VERSION, prompts.ENRICH_VERSION, "training-examples-v1"),
    )
    def training_examples(generation: GenerationResource, instructions: pl.DataFrame, catalyst: pl.DataFrame, base: pl.DataFrame):
        engine = generation.engine(base["path"][0])
        rows = [
            {
                "iteration": 0,
                "task": "answer",
                "example_id": ex["example_id"],
                "rationale_id": ex["example_id"],
                "rationale_iteration": 0,
                "instruction": ex["instruction"],
                "input": ex["input"],
                "rationale": ex["rationale"],
                "response": ex["output"],
                "prompt": engine.render_chat(prompts.answer_messages(ex["instruction"], ex["input"])),
                "completion": prompts.answer_completion(ex["rationale"], ex["output"]),
            }
            for ex in instructions.iter_rows(named=True)
        ]
        rows += [
            {
                "iteration": 0,
                "task": "enrich",
                "example_id": c["catalyst_id"],
                "rationale_id": None,
                "rationale_iteration": 0,
                "instruction": c["instruction"],
                "input": c["input"],
                "rationale": c["rationale"],
                "response": c["output"],
                "prompt": engine.render_chat(prompts.enrich_messages(c["instruction"], c["input"], c["short_rationale"], c["output"])),
                "completion": c["rationale"],
            }
            for c in catalyst.iter_rows(named=True)
        ]
        df = frame(rows, schemas.TRAINING_EXAMPLES)
        return table_output(df, _training_metadata(df))

    return training_examples


def _training_examples(t: int) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(t, "training_examples"),
        ins={
            "previous_examples": dg.AssetIn(key(t - 1, "training_examples")),
            "selected": dg.AssetIn(key(t, "selected")),
            "candidates": dg.AssetIn(key(t, "candidates")),
        },
        group_name=f"iter_{t}",
        kinds={"polars", "parquet"},
        description=(
            f"M{t}'s training set: answering on D0 with each example's newest selected rationale "
            f"(selected at iteration {t} where there is one), plus the catalyst C."
        ),
        # renders answer completions only: the enriching rows are copied from the previous training set
        code_version=code_version(prompts.ANSWER_FORMAT_VERSION, "training-examples-v1"),
    )
    def training_examples(previous_examples: pl.DataFrame, selected: pl.DataFrame, candidates: pl.DataFrame):
        chosen = selected.join(candidates.select("candidate_id", "text"), on="candidate_id", how="left")
        new_rationale = {r["example_id"]: (r["candidate_id"], r["text"]) for r in chosen.iter_rows(named=True)}
        rows = []
        for row in previous_examples.iter_rows(named=True):
            row = {**row, "iteration": t}
            if row["task"] == "answer" and row["example_id"] in new_rationale:
                row["rationale_id"], row["rationale"] = new_rationale[row["example_id"]]
                row["rationale_iteration"] = t
                row["completion"] = prompts.answer_completion(row["rationale"], row["response"])
            rows.append(row)
        df = frame(rows, schemas.TRAINING_EXAMPLES)
        lengths = plots.rationale_lengths(pl.concat([previous_examples, df], how="diagonal_relaxed"))
        meta = {
            **_training_metadata(df),
            "rationales_replaced": len(new_rationale),
            "rationale_lengths": dg.MetadataValue.md(plots.markdown_image(lengths, "rationale length by iteration")),
        }
        return table_output(df, meta)

    return training_examples


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint(cfg: ExperimentConfig, t: int) -> dg.AssetsDefinition:
    continue_previous = cfg.train.init == "previous" and t >= 1
    ins = {"training_examples": dg.AssetIn(key(t, "training_examples")), "base": dg.AssetIn(BASE_MODEL)}
    if continue_previous:
        ins["previous"] = dg.AssetIn(key(t - 1, "checkpoint"))
    start = f"continuing M{t - 1}'s adapter" if continue_previous else "from the base model"

    def train(context: dg.AssetExecutionContext, training: TrainingResource, examples: pl.DataFrame, base: pl.DataFrame, prev):
        home = cfg.home / "checkpoints" / f"iter_{t}"
        staging = home / f"run-{context.run_id}"
        report = training.train(
            base["path"][0],
            list(zip(examples["prompt"].to_list(), examples["completion"].to_list())),
            str(staging),
            cfg.train,
            seed=cfg.experiment.seed + t,
            init_adapter=prev["path"][0] if prev is not None else None,
            log=context.log.info,
        )
        ckpt_id = checkpoint_id_for(f"M{t}", staging)
        final = commit_dir(staging, home / ckpt_id)
        row = {
            "checkpoint_id": ckpt_id,
            "iteration": t,
            "base_model": base["checkpoint_id"][0],
            "path": str(final),
            "trained_on": fingerprint(examples),
            "train_loss": report.final_loss,
            "run_id": context.run_id,
            "init": "previous" if prev is not None else "base",
            "parent_checkpoint_id": prev["checkpoint_id"][0] if prev is not None else None,
            "n_examples": examples.height,
            "steps": report.steps,
            "seconds": report.seconds,
            "truncated_examples": report.truncated,
        }
        meta = {
            "checkpoint_id": ckpt_id,
            "train_loss": report.final_loss,
            "steps": report.steps,
            "seconds": round(report.seconds, 1),
            "loss_curve": [round(x, 4) for x in report.loss_curve],
        }
        return table_output(frame([row], schemas.CHECKPOINTS), meta)

    # Dagster reads an asset's inputs from its signature, so the two variants are spelled out.
    if continue_previous:

        def checkpoint(context: dg.AssetExecutionContext, training: TrainingResource, training_examples: pl.DataFrame, base: pl.DataFrame, previous: pl.DataFrame):
            return train(context, training, training_examples, base, previous)

    else:

        def checkpoint(context: dg.AssetExecutionContext, training: TrainingResource, training_examples: pl.DataFrame, base: pl.DataFrame):
            return train(context, training, training_examples, base, None)

    return dg.asset(
        key=key(t, "checkpoint"),
        ins=ins,
        group_name=f"iter_{t}",
        kinds={"pytorch", "peft"},
        description=f"M{t}: a LoRA adapter (peft format) trained on iter_{t}/training_examples, {start}.",
        code_version=code_version(cfg.section_hash("train"), str(cfg.experiment.seed)),
    )(checkpoint)


# ----------------------------------------------------------------------------------------------- expand, score, select


def _candidates(cfg: ExperimentConfig, t: int) -> dg.AssetsDefinition:
    ExpandConfig = expand_config_class(cfg)

    @dg.asset(
        key=key(t, "candidates"),
        ins={
            "previous_examples": dg.AssetIn(key(t - 1, "training_examples")),
            "previous_checkpoint": dg.AssetIn(key(t - 1, "checkpoint")),
            "base": dg.AssetIn(BASE_MODEL),
        },
        group_name=f"iter_{t}",
        kinds={"pytorch", "polars", "parquet"},
        description=(
            f"M{t - 1} enriches the current rationale of each expanded example into N candidates "
            "(seeded sampling, generated in committed shards; parent_id = the rationale it enriched)."
        ),
        # the enriching prompt, then the rationale read out of each generation (strip_think, think tags)
        code_version=code_version(
            cfg.section_hash("expand"),
            prompts.ENRICH_VERSION,
            prompts.RATIONALE_EXTRACTION_VERSION,
            prompts.ANSWER_FORMAT_VERSION,
            str(cfg.experiment.seed),
        ),
    )
    def candidates(
        context: dg.AssetExecutionContext,
        config: ExpandConfig,  # type: ignore[valid-type]
        generation: GenerationResource,
        previous_examples: pl.DataFrame,
        previous_checkpoint: pl.DataFrame,
        base: pl.DataFrame,
    ):
        current = {r["example_id"]: r for r in answer_rows(previous_examples).iter_rows(named=True)}
        subset = expansion_subset(list(current), cfg.expand.examples, cfg.experiment.seed)
        tasks = [
            ExpansionTask(e, current[e]["rationale_id"], current[e]["instruction"], current[e]["input"], current[e]["rationale"], current[e]["response"])
            for e in subset
        ]
        params = SamplingParams(
            n=config.candidates,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=cfg.experiment.seed,
        )
        settings = ExpansionSettings(t, previous_checkpoint["checkpoint_id"][0], params, cfg.expand.shard_size)
        adapter = previous_checkpoint["path"][0]
        shard_dir = cfg.home / "shards" / f"iter_{t}" / "candidates" / recipe_key(tasks, settings, adapter)
        engine = generation.engine(base["path"][0])
        table, counts = expand(tasks, engine, settings, shard_dir, context.run_id, adapter, context.log.info)
        df = pl.from_arrow(table).sort(["example_id", "sample_index"])
        meta = {
            "examples": len(tasks),
            "candidates": df.height,
            "mean_tokens": float(df["n_tokens"].mean() or 0.0),
            "cut_off_at_token_limit": int((df["finish_reason"] == "length").sum()),
            "shards_reused": counts["reused"],
            "shards_generated": counts["generated"],
        }
        return table_output(df, meta)

    return candidates


def _scores(cfg: ExperimentConfig, t: int) -> dg.AssetsDefinition:
    @dg.asset(
        key=key(t, "scores"),
        ins={
            "candidates": dg.AssetIn(key(t, "candidates")),
            "previous_examples": dg.AssetIn(key(t - 1, "training_examples")),
            "previous_checkpoint": dg.AssetIn(key(t - 1, "checkpoint")),
            "base": dg.AssetIn(BASE_MODEL),
        },
        group_name=f"iter_{t}",
        kinds={"pytorch", "polars", "parquet"},
        description=(
            "Every selector's score for every candidate (role 'candidate') and for the parent rationale each "
            f"example started from (role 'parent'): length, likelihood under M{t - 1}, consistency."
        ),
        code_version=code_version(
            prompts.ANSWER_FORMAT_VERSION, str(cfg.select.degeneration_ngram), str(cfg.select.max_repeated_fraction), "scores-v1"
        ),
    )
    def scores(
        generation: GenerationResource,
        candidates: pl.DataFrame,
        previous_examples: pl.DataFrame,
        previous_checkpoint: pl.DataFrame,
        base: pl.DataFrame,
    ):
        expanded = set(candidates["example_id"].to_list())
        parents = answer_rows(previous_examples).filter(pl.col("example_id").is_in(list(expanded)))
        references = {r["example_id"]: Reference(r["instruction"], r["input"], r["response"]) for r in parents.iter_rows(named=True)}
        items = [
            Scorable(r["candidate_id"], r["example_id"], "candidate", r["text"], r["finish_reason"])
            for r in candidates.iter_rows(named=True)
        ]
        items += [Scorable(r["rationale_id"], r["example_id"], "parent", r["rationale"], "stop") for r in parents.iter_rows(named=True)]
        table = score(
            items,
            references,
            generation.engine(base["path"][0]),
            t,
            adapter=previous_checkpoint["path"][0],
            ngram=cfg.select.degeneration_ngram,
            max_repeated_fraction=cfg.select.max_repeated_fraction,
        )
        df = pl.from_arrow(table)
        meta = {
            "candidates": df.filter(pl.col("role") == "candidate").height,
            **plots.score_summary(df),  # per selector: mean, p10, median, p90 of finite scores; degenerate count
            "score_distributions": dg.MetadataValue.md(plots.markdown_image(plots.score_distributions(df), "selector scores")),
        }
        return table_output(df, meta)

    return scores


def _selection_inputs(warehouse: WarehouseResource, t: int) -> tuple[Path, Path]:
    """The Parquet files of iter_t/candidates and iter_t/scores: DuckDB reads them where they lie, so the
    candidate table is never loaded into Python."""
    return warehouse.path(key(t, "candidates").path), warehouse.path(key(t, "scores").path)


def _selected(cfg: ExperimentConfig, t: int) -> dg.AssetsDefinition:
    SelectConfig = select_config_class(cfg)

    @dg.asset(
        key=key(t, "selected"),
        deps=[key(t, "candidates"), key(t, "scores")],
        group_name=f"iter_{t}",
        kinds={"duckdb", "sql", "parquet"},
        description=(
            "Per example, the candidate the selector keeps (`sql/select_{selector}.sql`, run by DuckDB): "
            "best score, deterministic tie-breaks, optionally only if it beats its parent by a margin."
        ),
        code_version=code_version(selection_sql_version([cfg.select.selector]), cfg.section_hash("select")),
    )
    def selected(context: dg.AssetExecutionContext, config: SelectConfig, warehouse: WarehouseResource):  # type: ignore[valid-type]
        selector = config.selector.value
        candidates, scores = _selection_inputs(warehouse, t)
        df = pl.from_arrow(select_best(candidates, scores, selector, config.margin))
        examples = count_examples(candidates)
        meta = {
            "selector": selector,
            "margin": config.margin if config.margin is not None else "none",
            "examples": examples,
            "selected": df.height,
            "selection_rate": df.height / examples if examples else 0.0,
            "mean_score": float(df["score"].mean() or 0.0) if df.height else 0.0,
            "mean_parent_score": float(df["parent_score"].mean() or 0.0) if df.height else 0.0,
        }
        if df.height:  # one example's story, so the UI shows where a kept rationale came from and why it won
            meta["story"] = dg.MetadataValue.md(rationale_story(warehouse.home, df["candidate_id"][0], selector))
        context.log.info(f"{selector}: kept {df.height} of {examples} examples")
        return table_output(df, meta)

    return selected


def _agreement(choices: pl.DataFrame) -> int:
    """Examples where every selector kept a candidate, and the same one."""
    per_example = choices.group_by("example_id").agg(pl.len().alias("kept"), pl.col("candidate_id").n_unique().alias("distinct"))
    return per_example.filter((pl.col("kept") == len(SELECTORS)) & (pl.col("distinct") == 1)).height


def _selector_choices(cfg: ExperimentConfig, t: int) -> dg.AssetsDefinition:
    margin = cfg.select.margin

    @dg.asset(
        key=key(t, "selector_choices"),
        deps=[key(t, "candidates"), key(t, "scores")],
        group_name=f"iter_{t}",
        kinds={"duckdb", "sql", "parquet"},
        description=(
            "What each selector keeps per example (every `sql/select_*.sql` over the same candidates and scores, "
            "with the experiment's margin), so selectors can be compared in SQL; `selected` holds the configured one's."
        ),
        code_version=code_version(selection_sql_version(), str(margin)),
    )
    def selector_choices(warehouse: WarehouseResource):
        candidates, scores = _selection_inputs(warehouse, t)
        df = pl.from_arrow(select_with_every_selector(candidates, scores, margin))
        kept = dict(df.group_by("selector").len().iter_rows())
        meta = {
            "examples": count_examples(candidates),
            **{f"kept_by_{s}": kept.get(s, 0) for s in SELECTORS},
            "all_selectors_agree": _agreement(df),
        }
        return table_output(df, meta)

    return selector_choices
