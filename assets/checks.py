"""Asset checks: the contracts a researcher relies on when reading the tables.

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

from assets import schemas
from assets.data import BASE_MODEL, CATALYST, CATALYST_REJECTED, INSTRUCTIONS, INSTRUCTIONS_REJECTED
from assets.evaluation import COMPARISON, QUESTIONS, SCALING, SUMMARY, eval_key, eval_keys
from assets.iteration import key
from resources import WarehouseResource
from srlm.arms import stages
from srlm.config import ExperimentConfig
from srlm.decontamination import QuestionIndex
from srlm.evaluation import accuracy_at_smallest_n
from srlm.storage import Storage

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
ACCURACY_DROP_WARNING = 0.05  # a fall larger than this on a benchmark (absolute) is worth a look


def table_contracts(cfg: ExperimentConfig) -> dict[dg.AssetKey, tuple[dict, list[str]]]:
    """Every table asset -> (column schema, key columns that must never be null)."""
    contracts = {
        INSTRUCTIONS: (schemas.INSTRUCTIONS, ["example_id", "instruction", "output"]),
        INSTRUCTIONS_REJECTED: (schemas.REJECTED, ["source", "reason", "raw"]),
        CATALYST: (schemas.CATALYST, ["catalyst_id", "instruction", "output", "rationale"]),
        CATALYST_REJECTED: (schemas.REJECTED, ["source", "reason", "raw"]),
        BASE_MODEL: ({**schemas.CHECKPOINTS, **schemas.BASE_MODEL_EXTRA}, ["checkpoint_id", "path"]),
    }
    for stage in stages(cfg.arms, cfg.experiment.iterations):
        contracts[key(stage.schema, "training_examples")] = (schemas.TRAINING_EXAMPLES, ["example_id", "task", "prompt", "completion"])
        contracts[key(stage.schema, "checkpoint")] = (schemas.CHECKPOINTS, ["checkpoint_id", "path", "trained_on", "base_model"])
        if stage.iteration >= 1:
            gen = stage.generation_schema
            contracts[key(gen, "candidates")] = (schemas.CANDIDATES, ["candidate_id", "example_id", "parent_id", "checkpoint_id"])
            contracts[key(gen, "scores")] = (schemas.SCORES, ["candidate_id", "example_id", "role"])
            # every selector's pick: the rows of `selected`, once per selector
            contracts[key(gen, "selector_choices")] = (schemas.SELECTED, ["example_id", "candidate_id", "selector"])
            contracts[key(stage.schema, "selected")] = (schemas.SELECTED, ["example_id", "candidate_id", "selector"])
    if cfg.eval.enabled:
        contracts[QUESTIONS] = (schemas.QUESTIONS, ["benchmark", "question_id", "answer"])
        contracts[SUMMARY] = (schemas.EVAL_SUMMARY, ["checkpoint_id", "benchmark"])
        contracts[SCALING] = (schemas.EVAL_SCALING, ["checkpoint_id", "benchmark", "n_samples"])
        contracts[COMPARISON] = (schemas.EVAL_COMPARISON, ["checkpoint_id", "reference_checkpoint_id", "benchmark", "verdict"])
        for k in eval_keys(cfg):
            contracts[k] = (schemas.EVALS, ["checkpoint_id", "question_id", "n_samples"])
    return contracts


def schema_problems(df: pl.DataFrame, schema: dict, keys: list[str]) -> list[str]:
    problems = []
    for column, dtype in schema.items():
        if column not in df.columns:
            problems.append(f"missing column {column}")
        elif df.schema[column] != dtype:
            problems.append(f"{column} is {df.schema[column]}, expected {dtype}")
    for column in keys:
        if column in df.columns and (nulls := df[column].null_count()):
            problems.append(f"{nulls} null {column}")
    return problems


def _result(problems: list[str], severity=ERROR, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not problems,
        severity=severity,
        description="; ".join(problems[:10]) if problems else None,
        metadata={"problems": len(problems), **metadata},
    )


def _check(
    asset: dg.AssetKey, name: str, description: str, fn: Callable[..., dg.AssetCheckResult], blocking: bool = True, deps=()
) -> dg.AssetChecksDefinition:
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


def build_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    checks = []
    for asset, (schema, keys) in table_contracts(cfg).items():
        checks.append(_check(asset, "schema", f"Columns and types match the contract; no null in {', '.join(keys)}.",
                             _schema(asset, schema, keys)))
    checks += _nothing_lost_checks(cfg)
    checks += _trend_checks(cfg)
    if cfg.eval.enabled:
        checks += _eval_completeness_checks(cfg)
        checks += _decontamination_checks(cfg)
    return checks


def _schema(asset: dg.AssetKey, schema: dict, keys: list[str]):
    def fn(context, wh):
        df = wh.read(asset.path)
        return _result(schema_problems(df, schema, keys), rows=df.height)

    return fn


# ------------------------------------------------------------------------------------------ nothing lost


def _latest_metadata(context: dg.AssetCheckExecutionContext, asset: dg.AssetKey) -> dict:
    event = context.instance.get_latest_materialization_event(asset)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _not_recorded(name: str) -> str:
    return f"the asset's latest materialization records no '{name}' metadata, so its rows cannot be accounted for"


def rows_accounted_problems(read: int | None, kept: int, rejected: int) -> list[str]:
    """Rows the asset read (its 'read' metadata; None when not recorded) = rows kept + rows rejected."""
    if read is None:
        return [_not_recorded("read")]
    return [f"read {read} != kept {kept} + rejected {rejected}"] if read != kept + rejected else []


def _rows_accounted(table: dg.AssetKey, rejected: dg.AssetKey):
    def fn(context, wh):
        read = _latest_metadata(context, table).get("read")
        kept, dropped = wh.read(table.path).height, wh.read(rejected.path).height
        return _result(rows_accounted_problems(read, kept, dropped), read=read, kept=kept, rejected=dropped)

    return fn


def selected_problems(selected: pl.DataFrame, candidates: pl.DataFrame) -> list[str]:
    joined = selected.join(candidates.select("candidate_id", pl.col("example_id").alias("c_example")), on="candidate_id", how="left")
    problems = []
    if missing := joined.filter(pl.col("c_example").is_null()).height:
        problems.append(f"{missing} selected rows point at no candidate")
    if mismatched := joined.filter(pl.col("c_example").is_not_null() & (pl.col("c_example") != pl.col("example_id"))).height:
        problems.append(f"{mismatched} selected rows point at another example's candidate")
    if (dupes := selected.height - selected["example_id"].n_unique()) > 0:
        problems.append(f"{dupes} examples selected twice")
    return problems


def scores_problems(scores: pl.DataFrame, candidates: pl.DataFrame) -> list[str]:
    scored = scores.filter(pl.col("role") == "candidate")
    problems = []
    if candidates.height != scored.height or set(candidates["candidate_id"]) != set(scored["candidate_id"]):
        problems.append(f"{candidates.height} candidates but {scored.height} candidate score rows")
    parents = set(scores.filter(pl.col("role") == "parent")["example_id"])
    if missing := set(candidates["example_id"]) - parents:
        problems.append(f"{len(missing)} expanded examples have no parent score")
    return problems


def candidates_problems(candidates: pl.DataFrame, examples: int | None) -> list[str]:
    """examples: how many examples the asset expanded (its 'examples' metadata; None when not recorded)."""
    if examples is None:
        return [_not_recorded("examples")]
    per_example = candidates.group_by("example_id").len()
    problems = []
    if per_example.height != examples:
        problems.append(f"{examples} examples expanded but {per_example.height} have candidates")
    if per_example.height and per_example["len"].n_unique() != 1:
        problems.append("examples have different numbers of candidates")
    return problems


def _nothing_lost_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    checks = [
        _check(INSTRUCTIONS, "rows_accounted", "Rows read = rows kept + rows rejected (with reasons).",
               _rows_accounted(INSTRUCTIONS, INSTRUCTIONS_REJECTED), deps=[INSTRUCTIONS_REJECTED]),
        _check(CATALYST, "rows_accounted", "Rows read = rows kept + rows rejected (with reasons).",
               _rows_accounted(CATALYST, CATALYST_REJECTED), deps=[CATALYST_REJECTED]),
    ]
    generated = set()
    for stage in stages(cfg.arms, cfg.experiment.iterations):
        if stage.iteration == 0:
            continue
        gen = stage.generation_schema
        cand, scores, sel, train = key(gen, "candidates"), key(gen, "scores"), key(stage.schema, "selected"), key(stage.schema, "training_examples")
        prev_train = key(stage.previous.schema, "training_examples")
        if gen not in generated:
            generated.add(gen)
            checks += [
                _check(cand, "complete", "Every expanded example has candidates, the same number for each.",
                       lambda ctx, wh, c=cand: _result(candidates_problems(wh.read(c.path), _latest_metadata(ctx, c).get("examples")))),
                _check(scores, "complete", "Every candidate has one score row; every expanded example has its parent's.",
                       lambda ctx, wh, s=scores, c=cand: _result(scores_problems(wh.read(s.path), wh.read(c.path))), deps=[cand]),
            ]
        checks += [
            _check(sel, "references_candidates", "Every selected row references an existing candidate of the same example, one per example.",
                   lambda ctx, wh, s=sel, c=cand: _result(selected_problems(wh.read(s.path), wh.read(c.path))), deps=[cand]),
            _check(train, "same_examples", "The training set keeps every example of the previous one.",
                   lambda ctx, wh, a=train, b=prev_train: _result(same_examples_problems(wh.read(a.path), wh.read(b.path))), deps=[prev_train]),
        ]
    return checks


def same_examples_problems(current: pl.DataFrame, previous: pl.DataFrame) -> list[str]:
    """A training set keeps every (task, example) of the previous one, and adds none."""
    a, b = set(zip(current["task"], current["example_id"])), set(zip(previous["task"], previous["example_id"]))
    return [f"{len(b - a)} examples lost, {len(a - b)} appeared"] if a != b else []


def expected_samples(protocols: dict[str, str], samples: Sequence[int]) -> dict[str, set[int]]:
    """The N each benchmark is evaluated at: every N for generate, only 1 for loglikelihood (deterministic)."""
    return {name: set(samples) if protocol == "generate" else {1} for name, protocol in protocols.items()}


def eval_completeness_problems(evals: pl.DataFrame, questions: pl.DataFrame, expected: dict[str, set[int]]) -> list[str]:
    """Every sampled question of every benchmark in `expected` has exactly one row per expected N, and no
    row answers anything else."""
    ns = pl.DataFrame(
        [(b, n) for b, values in expected.items() for n in values], schema={"benchmark": pl.String, "n_samples": pl.Int64}, orient="row"
    )
    sampled = questions.filter(pl.col("sampled") & pl.col("benchmark").is_in(list(expected))).select("benchmark", "question_id")
    wanted = sampled.join(ns, on="benchmark")
    have = evals.select("benchmark", "question_id", "n_samples")
    on = ["benchmark", "question_id", "n_samples"]
    gaps = (
        wanted.join(have, on=on, how="anti")
        .group_by("benchmark")
        .agg(pl.col("question_id").n_unique().alias("questions"), pl.col("n_samples").unique().sort().alias("ns"))
        .sort("benchmark")
    )
    asked = dict(sampled.group_by("benchmark").len().iter_rows())
    problems = [
        f"{r['benchmark']}: {r['questions']} of {asked[r['benchmark']]} sampled questions lack rows (N = {r['ns']})"
        for r in gaps.iter_rows(named=True)
    ]
    if unexpected := have.join(wanted, on=on, how="anti").height:
        problems.append(f"{unexpected} rows answer a question or N that was not asked for")
    if duplicates := have.height - have.unique().height:
        problems.append(f"{duplicates} duplicate (question, N) rows")
    return problems


def _launched_samples(context: dg.AssetCheckExecutionContext, asset: dg.AssetKey, default: list[int]) -> list[int]:
    """The N values the asset's latest materialization ran with: its Launchpad config, else the experiment's."""
    event = context.instance.get_latest_materialization_event(asset)
    run = context.instance.get_run_by_id(event.run_id) if event is not None else None
    ops = (run.run_config if run is not None else {}).get("ops", {})
    return ops.get(asset.to_python_identifier(), {}).get("config", {}).get("samples", default)


def _eval_completeness_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    protocols = {name: b.protocol for name, b in cfg.eval.enabled.items()}

    def complete(ctx, wh, asset):
        expected = expected_samples(protocols, _launched_samples(ctx, asset, list(cfg.eval.samples)))
        return _result(eval_completeness_problems(wh.read(asset.path), wh.read(QUESTIONS.path), expected))

    return [
        _check(asset, "complete", "Every sampled question of every enabled benchmark has one row per N "
               "(generate: each N the evaluation ran with; loglikelihood: N = 1).",
               lambda ctx, wh, asset=asset: complete(ctx, wh, asset), deps=[QUESTIONS])
        for asset in eval_keys(cfg)
    ]


# ------------------------------------------------------------------------------------------ trends


def rationale_growth(selected: pl.DataFrame, scores: pl.DataFrame) -> tuple[list[str], float, float]:
    """Mean tokens of the selected rationales vs of the parents they enriched."""
    chosen = scores.filter(pl.col("role") == "candidate").join(selected.select("candidate_id"), on="candidate_id")
    parents = scores.filter(pl.col("role") == "parent").join(selected.select("example_id"), on="example_id")
    new, old = float(chosen["n_tokens"].mean() or 0.0), float(parents["n_tokens"].mean() or 0.0)
    problems = [] if new > old or chosen.height == 0 else [f"selected rationales average {new:.1f} tokens, their parents {old:.1f}"]
    return problems, new, old


def accuracy_drops(current: pl.DataFrame, previous: pl.DataFrame, tolerance: float = ACCURACY_DROP_WARNING) -> list[str]:
    now, before = (accuracy_at_smallest_n(df.iter_rows(named=True)) for df in (current, previous))
    return [
        f"{b}: {before[b]:.3f} -> {now[b]:.3f}"
        for b in sorted(now)
        if b in before and now[b] < before[b] - tolerance
    ]


def _trend_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    checks = []
    all_stages = stages(cfg.arms, cfg.experiment.iterations)
    for stage in all_stages:
        if stage.iteration == 0:
            continue
        sel, scores = key(stage.schema, "selected"), key(stage.generation_schema, "scores")

        def growth(ctx, wh, sel=sel, scores=scores):
            problems, new, old = rationale_growth(wh.read(sel.path), wh.read(scores.path))
            return _result(problems, WARN, selected_mean_tokens=new, parent_mean_tokens=old)

        checks.append(_check(sel, "rationale_growth", "Selected rationales are longer than the parents they enriched (SRLM's premise).",
                             growth, blocking=False, deps=[scores]))
    if cfg.eval.enabled:
        for stage in all_stages:
            previous, current = eval_key(stage.previous), eval_key(stage)
            checks.append(
                _check(current, "no_accuracy_regression",
                       f"No benchmark loses more than {ACCURACY_DROP_WARNING:.0%} accuracy against {previous.to_user_string()}.",
                       lambda ctx, wh, a=current, b=previous: _result(accuracy_drops(wh.read(a.path), wh.read(b.path)), WARN),
                       blocking=False, deps=[previous])
            )
    return checks


# ------------------------------------------------------------------------------------------ decontamination


@lru_cache(maxsize=4)
def _question_index(storage: Storage, path: str, stamp: str, n: int) -> QuestionIndex:
    """Built once per version of the questions table (`stamp` changes when it is rewritten)."""
    questions = pl.from_arrow(storage.read_parquet(path, columns=["question_id", "question"]))
    return QuestionIndex(questions.iter_rows(), n)


def instruction_texts(instructions: pl.DataFrame) -> list[tuple[str, str]]:
    """What D0 trains on: each example's instruction (with its input) and its reference output."""
    rows = list(instructions.iter_rows(named=True))
    return [(r["example_id"], f"{r['instruction']} {r['input']}") for r in rows] + [(f"{r['example_id']}/output", r["output"]) for r in rows]


def catalyst_texts(catalyst: pl.DataFrame) -> list[tuple[str, str]]:
    """What the catalyst trains on: each instruction (with its input) and its enriched rationale."""
    rows = list(catalyst.iter_rows(named=True))
    return [(r["catalyst_id"], f"{r['instruction']} {r['input']}") for r in rows] + [(f"{r['catalyst_id']}/rationale", r["rationale"]) for r in rows]


def selected_texts(selected: pl.DataFrame, candidates: pl.DataFrame) -> list[tuple[str, str]]:
    """The selected rationales, which the next checkpoint trains on."""
    df = selected.join(candidates.select("candidate_id", "text"), on="candidate_id")
    return list(zip(df["candidate_id"], df["text"]))


def decontamination_result(texts: list[tuple[str, str]], index: QuestionIndex) -> dg.AssetCheckResult:
    found = index.check(texts)
    exact = [f for f in found if f.kind == "exact"]
    examples = [f"{f.text_id} ~ {f.question_id} ({f.kind}: '{f.evidence[:80]}')" for f in (exact or found)[:5]]
    return dg.AssetCheckResult(
        passed=not found,
        severity=ERROR if exact else WARN,
        description=(f"{len(exact)} exact duplicates of evaluation questions; " if exact else "")
        + (f"{len(found)} texts share a {index.n}-gram with an evaluation question" if found else "")
        or None,
        metadata={"texts": len(texts), "exact_duplicates": len(exact), "ngram_overlaps": len(found) - len(exact), "examples": examples},
    )


def _decontamination_checks(cfg: ExperimentConfig) -> list[dg.AssetChecksDefinition]:
    n = cfg.eval.decontamination_ngram

    def index(wh: WarehouseResource) -> QuestionIndex:
        return _question_index(wh.storage, str(wh.path(QUESTIONS.path)), wh.stamp(QUESTIONS.path), n)

    def instructions(ctx, wh):
        return decontamination_result(instruction_texts(wh.read(INSTRUCTIONS.path)), index(wh))

    def catalyst(ctx, wh):
        return decontamination_result(catalyst_texts(wh.read(CATALYST.path)), index(wh))

    description = (
        f"Training text sharing a {n}-word sequence with an evaluation question is flagged (warning); "
        "text equal to an evaluation question blocks the run."
    )
    checks = [
        _check(INSTRUCTIONS, "decontamination", description, instructions, deps=[QUESTIONS]),
        _check(CATALYST, "decontamination", description, catalyst, deps=[QUESTIONS]),
    ]
    for stage in stages(cfg.arms, cfg.experiment.iterations):
        if stage.iteration == 0:
            continue
        sel, cand = key(stage.schema, "selected"), key(stage.generation_schema, "candidates")

        def rationales(ctx, wh, sel=sel, cand=cand):
            return decontamination_result(selected_texts(wh.read(sel.path), wh.read(cand.path)), index(wh))

        checks.append(_check(sel, "decontamination", description, rationales, deps=[QUESTIONS, cand]))
    return checks
