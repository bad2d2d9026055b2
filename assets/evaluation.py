"""Evaluation assets: the benchmark questions, an evaluation of the base model and of every checkpoint,
and the SQL summaries (accuracy per checkpoint x benchmark; accuracy vs number of voted samples)."""

import hashlib

import dagster as dg
import polars as pl

from assets.data import BASE_MODEL
from assets.launchpad import eval_config_class, questions_config_class
from assets.tables import asset_key, code_version, frame, table_key, table_output
from resources import GenerationResource, WarehouseResource
from srlm import answer_extraction, benchmarks, comparison, evaluation, plots, registry, stats, voting
from srlm.arms import BASE_STAGE, Stage, arm_slug, comparison_pairs, evaluated
from srlm.benchmarks import question_row, read_benchmark, sample_questions
from srlm.comparison import comparison_rows
from srlm.config import ExperimentConfig
from srlm.evaluation import EvalSettings, accuracy_at_smallest_n, evaluate, questions_by_benchmark
from srlm.schemas import CHECKPOINT_TABLE, EVAL_COMPARISON, EVAL_TABLE, QUESTIONS as QUESTION_COLUMNS
from srlm.sqlfiles import run_sql, sql_version

QUESTIONS = asset_key(registry.QUESTIONS)
SUMMARY = asset_key(registry.SUMMARY)
SCALING = asset_key(registry.SCALING)
COMPARISON = asset_key(registry.COMPARISON)


def _source_version(*modules) -> str:
    """The evaluation recipe lives in code (readers and prompt templates, extraction rules, the protocols
    and voting): hash their source."""
    return hashlib.sha256(b"".join(open(m.__file__, "rb").read() for m in modules)).hexdigest()[:12]


EVAL_RECIPE = _source_version(benchmarks, answer_extraction, evaluation, voting)


def eval_settings(cfg: ExperimentConfig, config: dg.Config, asset_key: dg.AssetKey) -> EvalSettings:
    """The settings of one evaluation run from its Launchpad knobs. The Launchpad does not enforce pydantic
    bounds, so the sample counts are checked here, before any generation, naming the knob."""
    knob = f"run config 'samples' of {asset_key.to_user_string()}"
    return EvalSettings(
        samples=voting.check_sample_counts(config.samples, knob),
        temperature=config.temperature,
        top_p=cfg.eval.top_p,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=cfg.eval.seed,
    )


def build_evaluation_assets(cfg: ExperimentConfig) -> list[dg.AssetsDefinition]:
    if not cfg.eval.enabled:
        return []
    QuestionsConfig = questions_config_class(cfg)
    benchmarks_text = ", ".join(cfg.eval.enabled)

    @dg.asset(
        key=QUESTIONS,
        group_name="eval",
        kinds={"polars", "parquet"},
        description=(
            f"Every question of the evaluation benchmarks ({benchmarks_text}) from the offline kit; "
            "`sampled` marks the ones evaluated (the per-benchmark limit, seeded, stratified by subject/task)."
        ),
        code_version=code_version(cfg.section_hash("eval"), EVAL_RECIPE),
    )
    def questions(context: dg.AssetExecutionContext, config: QuestionsConfig):  # type: ignore[valid-type]
        rows = []
        for name, bench in cfg.eval.enabled.items():
            all_questions = read_benchmark(name, cfg.eval.data)
            limit = getattr(config, f"{name}_limit")
            chosen = {q.question_id for q in sample_questions(all_questions, limit, cfg.eval.seed)}
            context.log.info(f"{name}: {len(all_questions)} questions, {len(chosen)} evaluated ({bench.protocol})")
            rows += [question_row(q, bench.protocol, q.question_id in chosen) for q in all_questions]
        df = frame(rows, QUESTION_COLUMNS)
        counts = df.group_by("benchmark").agg(pl.len(), pl.col("sampled").sum()).sort("benchmark")
        meta = {f"{r['benchmark']}": f"{r['sampled']} of {r['len']}" for r in counts.iter_rows(named=True)}
        return table_output(df, meta)

    assets = [questions] + [_evaluation(cfg, stage) for stage in evaluated(cfg.arms, cfg.experiment.iterations)]
    keys = eval_keys(cfg)
    assets += [_sql_summary(SUMMARY, "eval_summary", keys), _sql_summary(SCALING, "eval_scaling", keys), _comparison(cfg, keys)]
    return assets


def eval_keys(cfg: ExperimentConfig) -> list[dg.AssetKey]:
    """Every evaluation asset: the base model's, then each checkpoint's."""
    return [table_key(EVAL_TABLE, stage) for stage in evaluated(cfg.arms, cfg.experiment.iterations)]


def _evaluation(cfg: ExperimentConfig, stage: Stage) -> dg.AssetsDefinition:
    EvalConfig = eval_config_class(cfg)
    key = table_key(EVAL_TABLE, stage)
    evaluates_checkpoint = stage is not BASE_STAGE
    protocols = {name: b.protocol for name, b in cfg.eval.enabled.items()}
    ins = {"questions": dg.AssetIn(QUESTIONS), "base": dg.AssetIn(BASE_MODEL)}
    if evaluates_checkpoint:
        ins["checkpoint"] = dg.AssetIn(table_key(CHECKPOINT_TABLE, stage))

    def run(context, config, generation: GenerationResource, questions: pl.DataFrame, base: pl.DataFrame, checkpoint):
        settings = eval_settings(cfg, config, key)
        model = checkpoint if checkpoint is not None else base
        by_benchmark = questions_by_benchmark(questions, protocols)
        storage = cfg.paths.open_storage()
        # the local engine, or Ray Data jobs whose rows land under shards/<asset key> (srlm/distributed.py)
        engine = generation.runner(base["path"][0], storage, storage.join("shards", *key.path))
        # local engines read a local folder (an object store's checkpoint through the home's cache); Ray's actors fetch it
        adapter = generation.adapter(checkpoint["path"][0], storage, str(cfg.home)) if checkpoint is not None else None
        rows = evaluate(by_benchmark, protocols, engine, adapter, settings, log=context.log.info)
        ident = {"checkpoint_id": model["checkpoint_id"][0], "arm": stage.arm, "iteration": int(model["iteration"][0])}
        df = frame(({**ident, **r} for r in rows), EVAL_TABLE.columns)
        meta = {f"accuracy/{b}": a for b, a in accuracy_at_smallest_n(rows).items()}
        return table_output(df, {"checkpoint_id": ident["checkpoint_id"], **meta, **generation.job_metadata(engine)})

    # Dagster reads an asset's inputs and config from its signature, so both variants are spelled out.
    if not evaluates_checkpoint:

        def evaluation(context: dg.AssetExecutionContext, config: EvalConfig, generation: GenerationResource, questions: pl.DataFrame, base: pl.DataFrame):  # type: ignore[valid-type]
            return run(context, config, generation, questions, base, None)

    else:

        def evaluation(context: dg.AssetExecutionContext, config: EvalConfig, generation: GenerationResource, questions: pl.DataFrame, base: pl.DataFrame, checkpoint: pl.DataFrame):  # type: ignore[valid-type]
            return run(context, config, generation, questions, base, checkpoint)

    return dg.asset(
        key=key,
        ins=ins,
        group_name="eval" if stage is BASE_STAGE else stage.schema,
        kinds={"pytorch", "polars", "parquet"},
        tags={"arm": arm_slug(stage.arm)},
        description=(
            f"{'the base model' if stage is BASE_STAGE else stage.label} on the sampled benchmark questions: one row per question and number of voted samples N "
            "(prediction, correct; generate protocol: majority vote over the first N sampled answers)."
        ),
        code_version=code_version(cfg.section_hash("eval"), EVAL_RECIPE),
    )(evaluation)


PLOTS = {
    "eval_summary": ("accuracy by checkpoint and benchmark", plots.accuracy_by_iteration),
    "eval_scaling": ("accuracy vs number of samples", plots.accuracy_vs_samples),
}


def _sql_summary(key: dg.AssetKey, query: str, eval_keys: list[dg.AssetKey]) -> dg.AssetsDefinition:
    descriptions = {
        "eval_summary": "Accuracy per checkpoint x benchmark (at N=1 and at the largest N), with its 95% Wilson interval "
        "and the change against the base model (sql/eval_summary.sql).",
        "eval_scaling": "Inference-time scaling: accuracy of the majority vote vs the number of sampled answers N, "
        "per checkpoint x benchmark (sql/eval_scaling.sql).",
    }

    @dg.asset(
        key=key,
        deps=eval_keys,
        group_name="eval",
        kinds={"duckdb", "sql", "parquet"},
        description=descriptions[query],
        code_version=sql_version(query),
    )
    def summary(warehouse: WarehouseResource):
        evals = _read_evals(warehouse, eval_keys)
        df = pl.from_arrow(run_sql(query, {"evals": evals.to_arrow()}))
        title, plot = PLOTS[query]
        return table_output(df, {"plot": dg.MetadataValue.md(plots.markdown_image(plot(df), title))})

    return summary


def _read_evals(warehouse: WarehouseResource, keys: list[dg.AssetKey]) -> pl.DataFrame:
    """Every evaluation table materialized so far (a run of one arm leaves the others' absent)."""
    tables = [warehouse.read(k.path) for k in keys if warehouse.exists(k.path)]
    return pl.concat(tables, how="diagonal_relaxed") if tables else frame([], EVAL_TABLE.columns)


def _comparison(cfg: ExperimentConfig, keys: list[dg.AssetKey]) -> dg.AssetsDefinition:
    pairs = comparison_pairs(cfg.arms, cfg.experiment.iterations)

    @dg.asset(
        key=COMPARISON,
        deps=keys,
        group_name="eval",
        kinds={"polars", "parquet"},
        description=(
            "Paired comparisons on the same questions: each checkpoint against sft and against the previous "
            "checkpoint of its arm (each SRLM arm's last one also against each self-training arm's), per "
            "benchmark, N and metric: difference with a 95% paired-bootstrap interval, exact McNemar p, "
            "verdict, and the smallest difference detectable at that n with 80% power."
        ),
        code_version=code_version(_source_version(stats, comparison), str(cfg.eval.comparison_resamples), str(cfg.eval.seed)),
    )
    def comparison_table(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        evals = _read_evals(warehouse, keys)
        rows = comparison_rows(evals, pairs, cfg.eval.comparison_resamples, cfg.eval.seed)
        df = frame(rows, EVAL_COMPARISON)
        for sentence in run_sql("comparison_headline", {"comparison": df.to_arrow()})["sentence"].to_pylist():
            context.log.info(sentence)
        verdicts = dict(df.group_by("verdict").len().iter_rows()) if df.height else {}
        return table_output(df, {"pairs": len(pairs), **{f"verdict/{k}": v for k, v in verdicts.items()}})

    return comparison_table
