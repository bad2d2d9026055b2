"""Asset checks: the contracts a researcher relies on when reading the tables. The rules are srlm/checks.py's;
this module attaches them to the assets, reads their tables and says what blocks.

- schema (blocking): every table has its contract's columns and types, and no null key.
- nothing lost (blocking): counts add up (a count the asset did not record fails); every selected row
  points at a candidate of its example; every candidate has its scores; every sampled question has its
  evaluation rows, one per N.
- decontamination (blocking on exact duplicates): training text sharing a 13-gram with an evaluation
  question is flagged (warning); text equal to a question blocks.
- trends (warnings): selected rationales should grow longer than their parents; accuracy should not
  fall against the previous iteration.
"""

from functools import lru_cache
from typing import Callable, Sequence

import dagster as dg
import polars as pl

from assets.data import CATALYST, CATALYST_REJECTED, INSTRUCTIONS, INSTRUCTIONS_REJECTED
from assets.evaluation import QUESTIONS, eval_keys
from assets.tables import asset_key, table_key
from resources import WarehouseResource
from srlm import checks as rules
from srlm.arms import Stage, generations, stages
from srlm.config import ExperimentConfig
from srlm.decontamination import QuestionIndex
from srlm.schemas import CANDIDATES_TABLE, EVAL_TABLE, SCORES_TABLE, SELECTED_TABLE, TRAINING_EXAMPLES_TABLE
from srlm.storage import Storage

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
Rule = Callable[[dg.AssetCheckExecutionContext, WarehouseResource], dg.AssetCheckResult]


def build_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    checks = []
    for key, table in rules.table_contracts(cfg.arms, cfg.experiment.iterations, bool(cfg.eval.enabled)).items():
        asset = asset_key(key)
        checks.append(_check(asset, "schema", f"Columns and types match the contract; no null in {', '.join(table.keys)}.",
                             _schema(asset, table.columns, table.keys)))
    checks += _nothing_lost_checks(cfg)
    checks += _trend_checks(cfg)
    if cfg.eval.enabled:
        checks += _eval_completeness_checks(cfg)
        checks += _decontamination_checks(cfg)
    return checks


def _result(problems: list[str], severity=ERROR, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        severity=severity,
        description="; ".join(problems[:10]) if problems else None,
        metadata={"problems": len(problems), **metadata},
    )


def _check(asset: dg.AssetKey, name: str, description: str, fn: Rule, blocking: bool = True, deps=()) -> dg.AssetChecksDefinition:
    """An asset check on `asset` that reads the tables of `asset` and `deps`; it is skipped (passed, saying
    so) while one of them is not materialized, e.g. when only the data assets were selected."""

    @dg.asset_check(asset=asset, name=name, description=description, blocking=blocking, additional_deps=list(deps))
    def check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        missing = not_materialized(warehouse, [asset, *deps])
        return skipped(missing) if missing else fn(context, warehouse)

    return check


def not_materialized(warehouse: WarehouseResource, tables: Sequence[dg.AssetKey]) -> list[str]:
    return [t.to_user_string() for t in tables if not warehouse.exists(t.path)]


def skipped(missing: list[str]) -> dg.AssetCheckResult:
    """A check that could not run: it passes (nothing is known to be wrong) and says why it did not run.
    Dagster 1.13 has no skipped outcome for an executed check (SKIPPED is only a check that never ran)."""
    return dg.AssetCheckResult(
        passed=True,
        description=f"skipped: {', '.join(missing)} not materialized",
        metadata={"skipped": True, "not_materialized": missing},
    )


def _schema(asset: dg.AssetKey, schema: dict, keys: Sequence[str]) -> Rule:
    def fn(context, wh):
        df = wh.read(asset.path)
        return _result(rules.schema_problems(df, schema, keys), rows=df.height)

    return fn


def _on_two(problems: Callable[[pl.DataFrame, pl.DataFrame], list[str]], a: dg.AssetKey, b: dg.AssetKey, severity=ERROR) -> Rule:
    """A rule over the tables of two assets."""
    return lambda ctx, wh: _result(problems(wh.read(a.path), wh.read(b.path)), severity)


# ------------------------------------------------------------------------------------------ nothing lost


def _latest_metadata(context: dg.AssetCheckExecutionContext, asset: dg.AssetKey) -> dict:
    event = context.instance.get_latest_materialization_event(asset)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _rows_accounted(table: dg.AssetKey, rejected: dg.AssetKey) -> Rule:
    def fn(context, wh):
        read = _latest_metadata(context, table).get("read")
        kept, dropped = wh.read(table.path).height, wh.read(rejected.path).height
        return _result(rules.rows_accounted_problems(read, kept, dropped), read=read, kept=kept, rejected=dropped)

    return fn


def _candidates_complete(cand: dg.AssetKey) -> Rule:
    return lambda ctx, wh: _result(rules.candidates_problems(wh.read(cand.path), _latest_metadata(ctx, cand).get("examples")))


def _generation_checks(stage: Stage) -> list[dg.AssetChecksDefinition]:
    cand, scores = table_key(CANDIDATES_TABLE, stage), table_key(SCORES_TABLE, stage)
    return [
        _check(cand, "complete", "Every expanded example has candidates, the same number for each.", _candidates_complete(cand)),
        _check(scores, "complete", "Every candidate has one score row; every expanded example has its parent's.",
               _on_two(rules.scores_problems, scores, cand), deps=[cand]),
    ]


def _selection_checks(stage: Stage) -> list[dg.AssetChecksDefinition]:
    cand, sel = table_key(CANDIDATES_TABLE, stage), table_key(SELECTED_TABLE, stage)
    train, prev_train = table_key(TRAINING_EXAMPLES_TABLE, stage), table_key(TRAINING_EXAMPLES_TABLE, stage.previous)
    return [
        _check(sel, "references_candidates", "Every selected row references an existing candidate of the same example, one per example.",
               _on_two(rules.selected_problems, sel, cand), deps=[cand]),
        _check(train, "same_examples", "The training set keeps every example of the previous one.",
               _on_two(rules.same_examples_problems, train, prev_train), deps=[prev_train]),
    ]


def _nothing_lost_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    checks = [
        _check(table, "rows_accounted", "Rows read = rows kept + rows rejected (with reasons).", _rows_accounted(table, rejected), deps=[rejected])
        for table, rejected in ((INSTRUCTIONS, INSTRUCTIONS_REJECTED), (CATALYST, CATALYST_REJECTED))
    ]
    for stage in generations(cfg.arms, cfg.experiment.iterations):  # each shared generation once
        checks += _generation_checks(stage)
    checks += [c for stage in stages(cfg.arms, cfg.experiment.iterations) if stage.iteration >= 1 for c in _selection_checks(stage)]
    return checks


def _launched_samples(context: dg.AssetCheckExecutionContext, asset: dg.AssetKey, default: list[int]) -> list[int]:
    """The N values the asset's latest materialization ran with: its Launchpad config, else the experiment's."""
    event = context.instance.get_latest_materialization_event(asset)
    run = context.instance.get_run_by_id(event.run_id) if event is not None else None
    ops = (run.run_config if run is not None else {}).get("ops", {})
    return ops.get(asset.to_python_identifier(), {}).get("config", {}).get("samples", default)


def _eval_completeness_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    protocols = {name: b.protocol for name, b in cfg.eval.enabled.items()}

    def complete(ctx, wh, asset):
        expected = rules.expected_samples(protocols, _launched_samples(ctx, asset, list(cfg.eval.samples)))
        return _result(rules.eval_completeness_problems(wh.read(asset.path), wh.read(QUESTIONS.path), expected))

    return [
        _check(asset, "complete", "Every sampled question of every enabled benchmark has one row per N "
               "(generate: each N the evaluation ran with; loglikelihood: N = 1).",
               lambda ctx, wh, asset=asset: complete(ctx, wh, asset), deps=[QUESTIONS])
        for asset in eval_keys(cfg)
    ]


# ------------------------------------------------------------------------------------------ trends


def _growth(sel: dg.AssetKey, scores: dg.AssetKey) -> Rule:
    def fn(ctx, wh):
        problems, new, old = rules.rationale_growth(wh.read(sel.path), wh.read(scores.path))
        return _result(problems, WARN, selected_mean_tokens=new, parent_mean_tokens=old)

    return fn


def _trend_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    checks = []
    all_stages = stages(cfg.arms, cfg.experiment.iterations)
    for stage in all_stages:
        if stage.iteration == 0:
            continue
        sel, scores = table_key(SELECTED_TABLE, stage), table_key(SCORES_TABLE, stage)
        checks.append(_check(sel, "rationale_growth", "Selected rationales are longer than the parents they enriched (SRLM's premise).",
                             _growth(sel, scores), blocking=False, deps=[scores]))
    if cfg.eval.enabled:
        for stage in all_stages:
            previous, current = table_key(EVAL_TABLE, stage.previous), table_key(EVAL_TABLE, stage)
            checks.append(
                _check(current, "no_accuracy_regression",
                       f"No benchmark loses more than {rules.ACCURACY_DROP_WARNING:.0%} accuracy against {previous.to_user_string()}.",
                       _on_two(rules.accuracy_drops, current, previous, WARN), blocking=False, deps=[previous])
            )
    return checks


# ------------------------------------------------------------------------------------------ decontamination


@lru_cache(maxsize=4)
def _question_index(storage: Storage, path: str, stamp: str, n: int) -> QuestionIndex:
    """Built once per version of the questions table (`stamp` changes when it is rewritten)."""
    questions = pl.from_arrow(storage.read_parquet(path, columns=["question_id", "question"]))
    return QuestionIndex(questions.iter_rows(), n)


def decontamination_result(texts: list[tuple[str, str]], index: QuestionIndex) -> dg.AssetCheckResult:
    report = rules.contamination_report(texts, index)
    return dg.AssetCheckResult(
        passed=report.passed, severity=ERROR if report.blocking else WARN, description=report.description, metadata=report.metadata
    )


def _decontamination_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    n = cfg.eval.decontamination_ngram

    def index(wh: WarehouseResource) -> QuestionIndex:
        return _question_index(wh.storage, str(wh.path(QUESTIONS.path)), wh.stamp(QUESTIONS.path), n)

    def texts_of(table: dg.AssetKey, texts: Callable[[pl.DataFrame], list[tuple[str, str]]]) -> Rule:
        return lambda ctx, wh: decontamination_result(texts(wh.read(table.path)), index(wh))

    description = (
        f"Training text sharing a {n}-word sequence with an evaluation question is flagged (warning); "
        "text equal to an evaluation question blocks the run."
    )
    checks = [
        _check(INSTRUCTIONS, "decontamination", description, texts_of(INSTRUCTIONS, rules.instruction_texts), deps=[QUESTIONS]),
        _check(CATALYST, "decontamination", description, texts_of(CATALYST, rules.catalyst_texts), deps=[QUESTIONS]),
    ]
    for stage in stages(cfg.arms, cfg.experiment.iterations):
        if stage.iteration == 0:
            continue
        sel, cand = table_key(SELECTED_TABLE, stage), table_key(CANDIDATES_TABLE, stage)

        def rationales(ctx, wh, sel=sel, cand=cand):
            return decontamination_result(rules.selected_texts(wh.read(sel.path), wh.read(cand.path)), index(wh))

        checks.append(_check(sel, "decontamination", description, rationales, deps=[QUESTIONS, cand]))
    return checks
