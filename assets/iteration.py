"""The arms' chains, unrolled by a factory (srlm/arms.py names every schema).

    sft/training_examples -> sft/checkpoint                                   (D0 only)
    srlm_iter_0/training_examples -> srlm_iter_0/checkpoint                   (M0: D0 + catalyst)
    <gen>/candidates -> <gen>/scores -> <gen>/selector_choices                (written by the previous checkpoint)
                                     -> <arm>_iter_t/selected -> <arm>_iter_t/training_examples -> <arm>_iter_t/checkpoint

<gen> is the stage's generation schema: `srlm_iter_1` for every SRLM arm's first iteration (M0 writes the
same candidates for all of them), else the arm's own `<arm>_iter_t`. Candidates depend on the previous
checkpoint (the model that rewrites) and the previous training set (each example's current rationale:
the parent of its candidates).
"""


import dagster as dg
import polars as pl

from assets.data import BASE_MODEL, CATALYST, INSTRUCTIONS
from assets.launchpad import expand_config_class, select_config_class
from assets.tables import code_version, fingerprint, frame, table_key, table_output
from resources import GenerationResource, TrainingResource, WarehouseResource
from srlm import enrichment, plots, prompts
from srlm.arms import Stage, arm_slug, generations, stages
from srlm.checkpoint_rows import checkpoint_metadata, checkpoint_prefix, checkpoint_row
from srlm.checkpoints import checkpoint_id_for, commit_checkpoint, local_checkpoint
from srlm.config import ExperimentConfig
from srlm.engines.types import SamplingParams
from srlm.expansion import ExpansionSettings, candidates_metadata, expand, prompt_version, recipe_key
from srlm.registry import CANDIDATE, ENRICH, selector_names
from srlm.schemas import (
    CANDIDATES_TABLE,
    CHECKPOINT_TABLE,
    SCORES_TABLE,
    SELECTED_TABLE,
    SELECTOR_CHOICES_TABLE,
    TRAINING_EXAMPLES_TABLE,
)
from srlm.scoring import score, scoring_inputs
from srlm.selection import (
    agreement,
    count_examples,
    select_best,
    select_with_every_selector,
    selection_metadata,
    selection_sql_version,
)
from srlm.sqlfiles import run_sql, sql_version
from srlm.storage import StoredFile
from srlm.story import rationale_story
from srlm.training_sets import chosen_rationales, expansion_tasks, initial_rows, next_rows, training_metadata


def build_iteration_assets(cfg: ExperimentConfig) -> list[dg.AssetsDefinition]:
    assets = []
    for stage in generations(cfg.arms, cfg.experiment.iterations):  # each shared generation once
        assets += [_candidates(cfg, stage), _scores(cfg, stage), _selector_choices(cfg, stage)]
    for stage in stages(cfg.arms, cfg.experiment.iterations):
        if stage.iteration == 0:
            assets += [_initial_training_examples(stage), _checkpoint(cfg, stage)]
        else:
            assets += [_selected(cfg, stage), _training_examples(stage), _checkpoint(cfg, stage)]
    return assets


def _tags(stage: Stage) -> dict[str, str]:
    return {"arm": arm_slug(stage.arm)}


def _generation_tags(stage: Stage) -> dict[str, str]:
    return {"arm": arm_slug(stage.generation_arm)}


# ----------------------------------------------------------------------------------------------- training sets


def _initial_training_examples(stage: Stage) -> dg.AssetsDefinition:
    ins = {"instructions": dg.AssetIn(INSTRUCTIONS), "base": dg.AssetIn(BASE_MODEL)}
    if stage.uses_catalyst:
        ins["catalyst"] = dg.AssetIn(CATALYST)
    what = "plus enriching on the catalyst C" if stage.uses_catalyst else "only (no catalyst)"

    def build(generation: GenerationResource, instructions: pl.DataFrame, base: pl.DataFrame, catalyst: pl.DataFrame | None):
        tokenizer = generation.tokenizer(base["path"][0])
        rows = initial_rows(stage.arm, instructions.iter_rows(named=True), catalyst.iter_rows(named=True) if catalyst is not None else None, tokenizer.render_chat)
        df = frame(rows, TRAINING_EXAMPLES_TABLE.columns)
        return table_output(df, training_metadata(df))

    # Dagster reads an asset's inputs from its signature, so the two variants are spelled out.
    if stage.uses_catalyst:

        def training_examples(generation: GenerationResource, instructions: pl.DataFrame, base: pl.DataFrame, catalyst: pl.DataFrame):
            return build(generation, instructions, base, catalyst)

    else:

        def training_examples(generation: GenerationResource, instructions: pl.DataFrame, base: pl.DataFrame):
            return build(generation, instructions, base, None)

    versions = (prompts.ANSWER_FORMAT_VERSION, prompts.ENRICH_VERSION) if stage.uses_catalyst else (prompts.ANSWER_FORMAT_VERSION,)
    return dg.asset(
        key=table_key(TRAINING_EXAMPLES_TABLE, stage),
        ins=ins,
        group_name=stage.schema,
        kinds={"polars", "parquet"},
        tags=_tags(stage),
        description=f"{stage.label}'s training set: answering on D0 (with whatever rationale D0 has) {what}.",
        code_version=code_version(*versions, "training-examples-v2"),
    )(training_examples)


def _training_examples(stage: Stage) -> dg.AssetsDefinition:
    @dg.asset(
        key=table_key(TRAINING_EXAMPLES_TABLE, stage),
        ins={
            "previous_examples": dg.AssetIn(table_key(TRAINING_EXAMPLES_TABLE, stage.previous)),
            "selected": dg.AssetIn(table_key(SELECTED_TABLE, stage)),
            "candidates": dg.AssetIn(table_key(CANDIDATES_TABLE, stage)),
        },
        group_name=stage.schema,
        kinds={"polars", "parquet"},
        tags=_tags(stage),
        description=(
            f"{stage.label}'s training set: {stage.previous.label}'s, with each example selected at iteration "
            f"{stage.iteration} answering with its new rationale."
        ),
        # renders answer completions only: the enriching rows are copied from the previous training set
        code_version=code_version(prompts.ANSWER_FORMAT_VERSION, "training-examples-v2"),
    )
    def training_examples(previous_examples: pl.DataFrame, selected: pl.DataFrame, candidates: pl.DataFrame):
        new_rationale = chosen_rationales(selected, candidates)
        rows = next_rows(stage.arm, stage.iteration, previous_examples.iter_rows(named=True), new_rationale)
        df = frame(rows, TRAINING_EXAMPLES_TABLE.columns)
        lengths = plots.rationale_lengths(pl.concat([previous_examples, df], how="diagonal_relaxed"))
        meta = {
            **training_metadata(df),
            "rationales_replaced": len(new_rationale),
            "rationale_lengths": dg.MetadataValue.md(plots.markdown_image(lengths, "rationale length by iteration")),
        }
        return table_output(df, meta)

    return training_examples


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint(cfg: ExperimentConfig, stage: Stage) -> dg.AssetsDefinition:
    continue_previous = cfg.train.init == "previous" and stage.iteration >= 1
    ins = {"training_examples": dg.AssetIn(table_key(TRAINING_EXAMPLES_TABLE, stage)), "base": dg.AssetIn(BASE_MODEL)}
    if continue_previous:
        ins["previous"] = dg.AssetIn(table_key(CHECKPOINT_TABLE, stage.previous))
    start = f"continuing {stage.previous.label}'s adapter" if continue_previous else "from the base model"

    def train(context: dg.AssetExecutionContext, generation: GenerationResource, training: TrainingResource, examples: pl.DataFrame, base: pl.DataFrame, prev):
        storage = cfg.paths.open_storage()
        staging = cfg.home / "checkpoints" / stage.schema / f"run-{context.run_id}"  # trained locally, then committed
        with generation.released():  # on one GPU the vLLM engine sleeps while the trainer runs
            report = training.train(
                base["path"][0],
                list(zip(examples["prompt"].to_list(), examples["completion"].to_list())),
                str(staging),
                cfg.train,
                seed=cfg.experiment.seed + stage.iteration,
                init_adapter=local_checkpoint(prev["path"][0], storage, cfg.home) if prev is not None else None,
                log=context.log.info,
                logging_dir=str(cfg.home / "tensorboard" / stage.schema / context.run_id),
            )
        ckpt_id = checkpoint_id_for(checkpoint_prefix(stage), staging)
        final = commit_checkpoint(staging, storage, cfg.home, stage.schema, ckpt_id)
        previous = prev.row(0, named=True) if prev is not None else None
        row = checkpoint_row(ckpt_id, stage, base.row(0, named=True), final, fingerprint(examples), report, context.run_id, previous, examples.height)
        return table_output(frame([row], CHECKPOINT_TABLE.columns), checkpoint_metadata(ckpt_id, report))

    # Dagster reads an asset's inputs from its signature, so the two variants are spelled out.
    if continue_previous:

        def checkpoint(context: dg.AssetExecutionContext, generation: GenerationResource, training: TrainingResource, training_examples: pl.DataFrame, base: pl.DataFrame, previous: pl.DataFrame):
            return train(context, generation, training, training_examples, base, previous)

    else:

        def checkpoint(context: dg.AssetExecutionContext, generation: GenerationResource, training: TrainingResource, training_examples: pl.DataFrame, base: pl.DataFrame):
            return train(context, generation, training, training_examples, base, None)

    return dg.asset(
        key=table_key(CHECKPOINT_TABLE, stage),
        ins=ins,
        group_name=stage.schema,
        kinds={"pytorch", "peft"},
        tags=_tags(stage),
        description=f"{stage.label}: a LoRA adapter (peft format) trained on {stage.schema}/training_examples, {start}.",
        code_version=code_version(cfg.section_hash("train"), str(cfg.experiment.seed)),
    )(checkpoint)


# ----------------------------------------------------------------------------------------------- expand, score, select


def _writer_ins(stage: Stage) -> dict[str, dg.AssetIn]:
    """What writes and scores a generation: the previous checkpoint, its training set (the parents), the base model."""
    return {
        "previous_examples": dg.AssetIn(table_key(TRAINING_EXAMPLES_TABLE, stage.previous)),
        "previous_checkpoint": dg.AssetIn(table_key(CHECKPOINT_TABLE, stage.previous)),
        "base": dg.AssetIn(BASE_MODEL),
    }


def _candidates(cfg: ExperimentConfig, stage: Stage) -> dg.AssetsDefinition:
    ExpandConfig = expand_config_class(cfg)
    gen, writer = stage.generation_schema, stage.previous
    task = "enriches" if stage.prompt == ENRICH else "answers again, rewriting"

    @dg.asset(
        key=table_key(CANDIDATES_TABLE, stage),
        ins=_writer_ins(stage),
        group_name=gen,
        kinds={"pytorch", "polars", "parquet"},
        tags=_generation_tags(stage),
        description=(
            f"{writer.label} {task} the current rationale of each expanded example into N candidates "
            "(seeded sampling, generated in committed shards; parent_id = the rationale it rewrote)."
        ),
        # the prompt, then the rationale read out of each generation (strip_think, think tags)
        code_version=code_version(
            cfg.section_hash("expand"),
            prompt_version(stage.prompt),
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
        tasks = expansion_tasks(previous_examples.iter_rows(named=True), cfg.expand.examples, cfg.experiment.seed)
        params = SamplingParams(
            n=config.candidates,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=cfg.experiment.seed,
        )
        settings = ExpansionSettings(
            stage.iteration, previous_checkpoint["checkpoint_id"][0], params, cfg.expand.shard_size, stage.generation_arm, stage.prompt
        )
        storage = cfg.paths.open_storage()
        adapter = previous_checkpoint["path"][0]  # where it is stored: part of the recipe, the same on every machine
        shard_dir = storage.join("shards", gen, "candidates", recipe_key(tasks, settings, adapter))
        # the local engine, or Ray Data jobs whose rows land beside the shards (srlm/distributed.py)
        engine = generation.runner(base["path"][0], storage, f"{shard_dir}/rows")
        run_adapter = generation.adapter(adapter, storage, str(cfg.home))
        table, counts = expand(tasks, engine, settings, shard_dir, context.run_id, run_adapter, context.log.info, storage)
        df = pl.from_arrow(table).sort(["example_id", "sample_index"])
        return table_output(df, {**candidates_metadata(df, len(tasks), counts), **generation.job_metadata(engine)})

    return candidates


def _scores(cfg: ExperimentConfig, stage: Stage) -> dg.AssetsDefinition:
    gen, writer = stage.generation_schema, stage.previous

    @dg.asset(
        key=table_key(SCORES_TABLE, stage),
        ins={"candidates": dg.AssetIn(table_key(CANDIDATES_TABLE, stage)), **_writer_ins(stage)},
        group_name=gen,
        kinds={"pytorch", "polars", "parquet"},
        tags=_generation_tags(stage),
        description=(
            "Every selector's score for every candidate (role 'candidate') and for the parent rationale each "
            f"example started from (role 'parent'): {', '.join(selector_names())}; likelihood under {writer.label}."
        ),
        code_version=code_version(
            prompts.ANSWER_FORMAT_VERSION, str(cfg.select.degeneration_ngram), str(cfg.select.max_repeated_fraction), "scores-v2"
        ),
    )
    def scores(
        generation: GenerationResource,
        candidates: pl.DataFrame,
        previous_examples: pl.DataFrame,
        previous_checkpoint: pl.DataFrame,
        base: pl.DataFrame,
    ):
        items, references = scoring_inputs(candidates, previous_examples)
        storage = cfg.paths.open_storage()
        engine = generation.runner(base["path"][0], storage, storage.join("shards", gen, "scores"))
        table = score(
            items,
            references,
            engine,
            stage.iteration,
            stage.generation_arm,
            adapter=generation.adapter(previous_checkpoint["path"][0], storage, str(cfg.home)),
            ngram=cfg.select.degeneration_ngram,
            max_repeated_fraction=cfg.select.max_repeated_fraction,
        )
        df = pl.from_arrow(table)
        meta = {
            "candidates": df.filter(pl.col("role") == CANDIDATE).height,
            **plots.score_summary(df),  # per selector: mean, p10, median, p90 of finite scores; degenerate count
            "score_distributions": dg.MetadataValue.md(plots.markdown_image(plots.score_distributions(df), "selector scores")),
            **generation.job_metadata(engine),
        }
        return table_output(df, meta)

    return scores


def _selection_inputs(warehouse: WarehouseResource, stage: Stage) -> tuple[StoredFile, StoredFile]:
    """The Parquet files of a stage's candidates and scores: DuckDB reads them where they lie (on an object
    store too), so the candidate table is never loaded into Python."""
    return warehouse.source(CANDIDATES_TABLE.key(stage)), warehouse.source(SCORES_TABLE.key(stage))


def _with_arm(df: pl.DataFrame, arm: str) -> pl.DataFrame:
    return df.with_columns(pl.lit(arm).alias("arm")).select(list(SELECTED_TABLE.columns))


def _selected(cfg: ExperimentConfig, stage: Stage) -> dg.AssetsDefinition:
    SelectConfig = select_config_class(cfg)
    selector = stage.selector

    @dg.asset(
        key=table_key(SELECTED_TABLE, stage),
        deps=[table_key(CANDIDATES_TABLE, stage), table_key(SCORES_TABLE, stage)],
        group_name=stage.schema,
        kinds={"duckdb", "sql", "parquet"},
        tags=_tags(stage),
        description=(
            f"Per example, the candidate the `{selector}` selector keeps (`sql/select_{selector}.sql`, run by DuckDB): "
            "best score, deterministic tie-breaks, optionally only if it beats its parent by a margin."
        ),
        code_version=code_version(selection_sql_version([selector]), cfg.section_hash("select")),
    )
    def selected(context: dg.AssetExecutionContext, config: SelectConfig, warehouse: WarehouseResource):  # type: ignore[valid-type]
        candidates, scores = _selection_inputs(warehouse, stage)
        df = _with_arm(pl.from_arrow(select_best(candidates, scores, selector, config.margin)), stage.arm)
        examples = count_examples(candidates)
        meta = selection_metadata(df, examples, selector, config.margin)
        if df.height:  # one example's story, so the UI shows where a kept rationale came from and why it won
            meta["story"] = dg.MetadataValue.md(rationale_story(warehouse.home, df["candidate_id"][0], selector, stage.schema))
        context.log.info(f"{selector}: kept {df.height} of {examples} examples")
        return table_output(df, meta)

    return selected


def _selector_choices(cfg: ExperimentConfig, stage: Stage) -> dg.AssetsDefinition:
    margin = cfg.select.margin
    parents = table_key(TRAINING_EXAMPLES_TABLE, stage.previous)

    @dg.asset(
        key=table_key(SELECTOR_CHOICES_TABLE, stage),
        deps=[table_key(CANDIDATES_TABLE, stage), table_key(SCORES_TABLE, stage), parents],
        group_name=stage.generation_schema,
        kinds={"duckdb", "sql", "parquet"},
        tags=_generation_tags(stage),
        description=(
            "What each selector keeps per example (every `sql/select_*.sql` over the same candidates and scores, "
            "with the experiment's margin), so selectors can be compared in SQL; `selected` holds the arm's own. "
            "Its metadata shows the method at work: candidate length against the parents, skill markers, "
            "likelihood gains, selector agreement, and three rewritten rationales beside their parents."
        ),
        code_version=code_version(selection_sql_version(), sql_version("enrichment", "enrichment_examples"), str(margin)),
    )
    def selector_choices(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        candidates, scores = _selection_inputs(warehouse, stage)
        df = _with_arm(pl.from_arrow(select_with_every_selector(candidates, scores, margin)), stage.generation_arm)
        kept = dict(df.group_by("selector").len().iter_rows())
        relations = {"candidates": candidates, "scores": scores, "selector_choices": df.to_arrow(), "training_examples": warehouse.source(parents.path)}
        figures = run_sql("enrichment", relations).to_pylist()
        examples = run_sql("enrichment_examples", relations).to_pylist()
        meta = {
            "examples": count_examples(candidates),
            **{f"kept_by_{s}": kept.get(s, 0) for s in selector_names()},
            "all_selectors_agree": agreement(df),
            **({f"enrichment/{k}": v for k, v in figures[0].items() if k not in ("arm", "iteration")} if figures else {}),
            "rewritten_beside_parents": dg.MetadataValue.md(enrichment.examples_markdown(examples)),
        }
        for row in figures:
            context.log.info(enrichment.summary_line(row))
        return table_output(df, meta)

    return selector_choices
