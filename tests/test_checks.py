"""Asset checks: each rule (srlm/checks.py) on passing and on failing tables, without Dagster; then the
Dagster wiring of a few (assets/checks.py)."""

import dagster as dg
import polars as pl
import pytest

from assets import checks
from assets.data import INSTRUCTIONS, INSTRUCTIONS_REJECTED
from assets.evaluation import QUESTIONS
from resources import ParquetIOManager, WarehouseResource
from srlm import checks as rules, schemas
from srlm.config import load_config
from srlm.decontamination import QuestionIndex, normalize
from srlm.schemas import frame

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def table(schema: dict, rows: list[dict]) -> pl.DataFrame:
    """A frame with the contract's columns: the given values, every other column null."""
    return frame(({c: r.get(c) for c in schema} for r in rows), schema)


def candidates(*rows: tuple[str, str]) -> pl.DataFrame:
    """rows: (candidate_id, example_id)"""
    return table(schemas.CANDIDATES, [{"candidate_id": c, "example_id": e, "iteration": 1, "text": f"text of {c}"} for c, e in rows])


def selected(*rows: tuple[str, str]) -> pl.DataFrame:
    """rows: (example_id, candidate_id)"""
    return table(schemas.SELECTED, [{"example_id": e, "candidate_id": c, "iteration": 1, "selector": "length"} for e, c in rows])


def scores(*rows: tuple[str, str, str, int]) -> pl.DataFrame:
    """rows: (candidate_id, example_id, role, n_tokens)"""
    return table(schemas.scores_columns(), [{"candidate_id": c, "example_id": e, "role": r, "n_tokens": n} for c, e, r, n in rows])


def training(*rows: tuple[str, str]) -> pl.DataFrame:
    """rows: (task, example_id)"""
    return table(schemas.TRAINING_EXAMPLES, [{"task": t, "example_id": e} for t, e in rows])


def evals(*rows: tuple[str, str, int, bool]) -> pl.DataFrame:
    """rows: (benchmark, question_id, n_samples, correct)"""
    return table(schemas.EVALS, [{"benchmark": b, "question_id": q, "n_samples": n, "correct": ok} for b, q, n, ok in rows])


def questions(*rows: tuple[str, str, bool]) -> pl.DataFrame:
    """rows: (benchmark, question_id, sampled)"""
    return table(schemas.QUESTIONS, [{"benchmark": b, "question_id": q, "sampled": s, "answer": "A"} for b, q, s in rows])


# ------------------------------------------------------------------------------------------ schema


def test_schema_passes_a_table_of_the_contract():
    assert rules.schema_problems(selected(("e1", "c1")), schemas.SELECTED, ["example_id", "candidate_id"]) == []


def test_schema_names_missing_columns_wrong_types_and_null_keys():
    df = selected(("e1", "c1"), ("e2", None)).drop("margin").with_columns(pl.col("score").cast(pl.String))
    problems = rules.schema_problems(df, schemas.SELECTED, ["example_id", "candidate_id"])
    assert problems == ["score is String, expected Float64", "missing column margin", "1 null candidate_id"]


def test_every_table_contract_names_key_columns_of_its_schema(micro_config):
    cfg = load_config(micro_config())
    contracts = rules.table_contracts(cfg.arms, cfg.experiment.iterations, evaluates=True)
    assert {"srlm_iter_1/scores", "srlm_likelihood_iter_1/selected", "eval/base_model", "model/base"} <= {"/".join(k) for k in contracts}
    for key, table in contracts.items():
        assert table.keys and set(table.keys) <= set(table.columns), key


# ------------------------------------------------------------------------------------------ nothing lost


def test_rows_accounted():
    assert rules.rows_accounted_problems(10, 7, 3) == []
    assert rules.rows_accounted_problems(10, 7, 2) == ["read 10 != kept 7 + rejected 2"]


def test_rows_accounted_fails_without_a_read_count():
    [problem] = rules.rows_accounted_problems(None, 7, 3)
    assert "no 'read' metadata" in problem


def test_selected_rows_reference_candidates_of_their_example():
    cands = candidates(("c1", "e1"), ("c2", "e1"), ("c3", "e2"))
    assert rules.selected_problems(selected(("e1", "c2"), ("e2", "c3")), cands) == []
    assert rules.selected_problems(selected(("e1", "c9")), cands) == ["1 selected rows point at no candidate"]
    assert rules.selected_problems(selected(("e2", "c1")), cands) == ["1 selected rows point at another example's candidate"]
    assert rules.selected_problems(selected(("e1", "c1"), ("e1", "c2")), cands) == ["1 examples selected twice"]


def test_every_candidate_has_its_scores_and_every_example_its_parent_score():
    cands = candidates(("c1", "e1"), ("c2", "e1"))
    full = scores(("c1", "e1", "candidate", 5), ("c2", "e1", "candidate", 6), ("e1", "e1", "parent", 3))
    assert rules.scores_problems(full, cands) == []
    assert rules.scores_problems(full.filter(pl.col("candidate_id") != "c2"), cands) == ["2 candidates but 1 candidate score rows"]
    assert rules.scores_problems(full.filter(pl.col("role") == "candidate"), cands) == ["1 expanded examples have no parent score"]


def test_candidates_are_complete():
    cands = candidates(("c1", "e1"), ("c2", "e1"), ("c3", "e2"), ("c4", "e2"))
    assert rules.candidates_problems(cands, 2) == []
    assert rules.candidates_problems(cands, 3) == ["3 examples expanded but 2 have candidates"]
    assert rules.candidates_problems(cands.head(3), 2) == ["examples have different numbers of candidates"]
    [problem] = rules.candidates_problems(cands, None)
    assert "no 'examples' metadata" in problem


def test_a_training_set_keeps_the_previous_examples():
    previous = training(("answer", "e1"), ("answer", "e2"), ("enrich", "k1"))
    assert rules.same_examples_problems(previous, previous) == []
    assert rules.same_examples_problems(previous.head(2), previous) == ["1 examples lost, 0 appeared"]
    grown = pl.concat([previous, training(("answer", "e3"))])
    assert rules.same_examples_problems(grown, previous) == ["0 examples lost, 1 appeared"]


# ------------------------------------------------------------------------------------------ eval completeness

EXPECTED = {"gsm8k": {1, 4}, "arc_challenge": {1}}
QUESTIONS_TABLE = questions(("gsm8k", "g1", True), ("gsm8k", "g2", True), ("gsm8k", "g3", False), ("arc_challenge", "a1", True))
FULL_EVAL = [("gsm8k", "g1", 1, True), ("gsm8k", "g1", 4, True), ("gsm8k", "g2", 1, False), ("gsm8k", "g2", 4, False),
             ("arc_challenge", "a1", 1, True)]


def test_expected_samples_are_every_n_for_generate_and_one_for_loglikelihood():
    assert rules.expected_samples({"gsm8k": "generate", "arc_challenge": "loglikelihood"}, [1, 4, 4]) == EXPECTED


def test_eval_complete_passes_when_every_sampled_question_has_every_n():
    assert rules.eval_completeness_problems(evals(*FULL_EVAL), QUESTIONS_TABLE, EXPECTED) == []


def test_eval_complete_names_questions_without_rows():
    missing_question = [r for r in FULL_EVAL if r[1] != "g2"]
    assert rules.eval_completeness_problems(evals(*missing_question), QUESTIONS_TABLE, EXPECTED) == [
        "gsm8k: 1 of 2 sampled questions lack rows (N = [1, 4])"
    ]
    missing_benchmark = [r for r in FULL_EVAL if r[0] != "arc_challenge"]
    assert rules.eval_completeness_problems(evals(*missing_benchmark), QUESTIONS_TABLE, EXPECTED) == [
        "arc_challenge: 1 of 1 sampled questions lack rows (N = [1])"
    ]


def test_eval_complete_names_a_missing_n():
    missing_n = [r for r in FULL_EVAL if r[2] != 4]
    assert rules.eval_completeness_problems(evals(*missing_n), QUESTIONS_TABLE, EXPECTED) == [
        "gsm8k: 2 of 2 sampled questions lack rows (N = [4])"
    ]


def test_eval_complete_flags_unasked_and_duplicate_rows():
    unasked = FULL_EVAL + [("gsm8k", "g3", 1, True), ("arc_challenge", "a1", 4, True)]
    assert rules.eval_completeness_problems(evals(*unasked), QUESTIONS_TABLE, EXPECTED) == [
        "2 rows answer a question or N that was not asked for"
    ]
    doubled = FULL_EVAL + FULL_EVAL[:1]
    assert rules.eval_completeness_problems(evals(*doubled), QUESTIONS_TABLE, EXPECTED) == ["1 duplicate (question, N) rows"]


# ------------------------------------------------------------------------------------------ trends


def test_rationale_growth_passes_when_the_selected_are_longer():
    sel = selected(("e1", "c1"))
    grown = scores(("c1", "e1", "candidate", 12), ("c2", "e1", "candidate", 30), ("e1", "e1", "parent", 8))
    assert rules.rationale_growth(sel, grown) == ([], 12.0, 8.0)


def test_rationale_growth_warns_when_the_selected_are_not_longer():
    sel = selected(("e1", "c1"))
    shrunk = scores(("c1", "e1", "candidate", 8), ("c2", "e1", "candidate", 30), ("e1", "e1", "parent", 8))
    assert rules.rationale_growth(sel, shrunk) == (["selected rationales average 8.0 tokens, their parents 8.0"], 8.0, 8.0)


def test_rationale_growth_of_an_empty_selection_passes():
    assert rules.rationale_growth(selected(), scores(("e1", "e1", "parent", 8)))[0] == []


def test_accuracy_drops_compare_the_smallest_n_per_benchmark():
    before = evals(("gsm8k", "g1", 1, True), ("gsm8k", "g2", 1, True), ("gsm8k", "g1", 4, False), ("gsm8k", "g2", 4, False),
                   ("arc_challenge", "a1", 1, True), ("arc_challenge", "a2", 1, False))
    # gsm8k at N=4 improves; only N=1 counts, where it falls from 1.0 to 0.5
    after = evals(("gsm8k", "g1", 1, True), ("gsm8k", "g2", 1, False), ("gsm8k", "g1", 4, True), ("gsm8k", "g2", 4, True),
                  ("arc_challenge", "a1", 1, True), ("arc_challenge", "a2", 1, False))
    assert rules.accuracy_drops(after, before) == ["gsm8k: 1.000 -> 0.500"]
    assert rules.accuracy_drops(before, before) == []
    assert rules.accuracy_drops(after, before, tolerance=0.6) == []


# ------------------------------------------------------------------------------------------ decontamination


@pytest.fixture
def index() -> QuestionIndex:
    return QuestionIndex([("gsm8k/0", QUESTION)], 13)


def test_clean_texts_pass(index):
    report = rules.contamination_report([("e1", "Describe a quiet garden in one sentence.")], index)
    assert report.passed and not report.blocking and report.description is None
    assert report.metadata["texts"] == 1


def test_a_shared_ngram_warns(index):
    words = QUESTION.split()
    report = rules.contamination_report([("e1", "Preamble: " + " ".join(words[2:16]) + " and more.")], index)
    assert not report.passed and not report.blocking
    assert report.metadata["ngram_overlaps"] == 1 and report.metadata["exact_duplicates"] == 0
    assert "1 texts share a 13-gram" in report.description


def test_an_exact_copy_blocks(index):
    report = rules.contamination_report([("e1", QUESTION.upper()), ("e2", "unrelated")], index)
    assert not report.passed and report.blocking
    assert report.description.startswith("1 exact duplicates of evaluation questions")
    assert report.metadata["examples"] == [f"e1 ~ gsm8k/0 (exact: '{normalize(QUESTION)[:80]}')"]


@pytest.mark.parametrize("text, severity", [(QUESTION, dg.AssetCheckSeverity.ERROR), ("Preamble: " + QUESTION + " more", dg.AssetCheckSeverity.WARN)])
def test_a_contamination_report_becomes_a_check_result_of_its_severity(index, text, severity):
    result = checks.decontamination_result([("e1", text)], index)
    assert not result.passed and result.severity == severity
    assert result.metadata["texts"].value == 1


def test_training_texts_checked_for_contamination():
    d0 = table(schemas.INSTRUCTIONS, [{"example_id": "e1", "instruction": "Add", "input": "2 and 3", "output": "5"}])
    assert rules.instruction_texts(d0) == [("e1", "Add 2 and 3"), ("e1/output", "5")]
    catalyst = table(schemas.CATALYST, [{"catalyst_id": "k1", "instruction": "Add", "input": "", "rationale": "2 + 3 = 5"}])
    assert rules.catalyst_texts(catalyst) == [("k1", "Add "), ("k1/rationale", "2 + 3 = 5")]
    assert rules.selected_texts(selected(("e1", "c2")), candidates(("c1", "e1"), ("c2", "e1"))) == [("c2", "text of c2")]


# ------------------------------------------------------------------------------------------ wiring


def test_completeness_checks_guard_every_evaluation(micro_config):
    cfg = load_config(micro_config({"experiment": {"iterations": 2}}))
    names = {(k.asset_key.to_user_string(), k.name) for c in checks.build_checks(cfg) for k in c.check_keys}
    for asset in ["eval/base_model", "sft/eval", "srlm_iter_0/eval", "srlm_likelihood_iter_1/eval", "srlm_likelihood_iter_2/eval"]:
        assert (asset, "complete") in names
    assert ("data/instructions", "rows_accounted") in names


def materialize_with_check(tmp_path, cfg, stubs: list, check: dg.AssetCheckKey, run_config=None) -> dg.AssetCheckEvaluation:
    """Materialize stub assets through the project's IO manager, with one of the project's checks."""
    [definition] = [c for c in checks.build_checks(cfg) if check in c.check_keys]
    home = str(tmp_path / "home")
    result = dg.materialize(
        [*stubs, definition],
        run_config=run_config,
        resources={"io_manager": ParquetIOManager(home=home), "warehouse": WarehouseResource(home=home)},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == check]
    return evaluation


def instruction_stubs(metadata: dict) -> list:
    @dg.asset(key=INSTRUCTIONS)
    def instructions():
        return dg.Output(table(schemas.INSTRUCTIONS, [{"example_id": "e1"}, {"example_id": "e2"}]), metadata=metadata)

    @dg.asset(key=INSTRUCTIONS_REJECTED)
    def rejected():
        return table(schemas.REJECTED, [{"reason": "empty output"}])

    return [instructions, rejected]


@pytest.mark.parametrize("metadata, passed", [({"read": 3}, True), ({"read": 4}, False), ({}, False)])
def test_rows_accounted_reads_the_materialization_metadata(tmp_path, micro_config, metadata, passed):
    cfg = load_config(micro_config())
    evaluation = materialize_with_check(tmp_path, cfg, instruction_stubs(metadata), dg.AssetCheckKey(INSTRUCTIONS, "rows_accounted"))
    assert evaluation.passed is passed
    if not metadata:
        assert "no 'read' metadata" in evaluation.description


def test_decontamination_is_skipped_while_the_questions_are_not_materialized(tmp_path, micro_config):
    """Materializing only the data assets: the check says why it did not run instead of failing the run."""
    cfg = load_config(micro_config())
    evaluation = materialize_with_check(tmp_path, cfg, instruction_stubs({"read": 3}), dg.AssetCheckKey(INSTRUCTIONS, "decontamination"))
    assert evaluation.passed
    assert evaluation.description == "skipped: eval/questions not materialized"
    assert evaluation.metadata["not_materialized"].value == ["eval/questions"]


def test_every_check_is_skipped_on_an_empty_warehouse(tmp_path, micro_config):
    """Each check of the experiment, run with none of its tables materialized, passes saying so."""
    all_checks = checks.build_checks(load_config(micro_config()))
    job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.all_asset_checks())
    defs = dg.Definitions(asset_checks=all_checks, jobs=[job], resources={"warehouse": WarehouseResource(home=str(tmp_path / "home"))})
    result = defs.resolve_job_def("checks_only").execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    evaluations = result.get_asset_check_evaluations()
    assert result.success
    assert len(evaluations) == sum(len(c.check_keys) for c in all_checks) > 10
    assert all(e.passed and e.description.startswith("skipped: ") and e.metadata["skipped"].value for e in evaluations)
    assert all(e.asset_key.to_user_string() in e.metadata["not_materialized"].value for e in evaluations)


class StubEvalConfig(dg.Config):
    samples: list[int] = [1, 2, 4]


def eval_stubs(ns: list[int]) -> list:
    @dg.asset(key=QUESTIONS)
    def stub_questions():
        return questions(("gsm8k", "g1", True), ("mmlu", "m1", True))

    @dg.asset(key=dg.AssetKey(["srlm_iter_0", "eval"]), deps=[QUESTIONS])
    def stub_eval(config: StubEvalConfig):
        return evals(*[("gsm8k", "g1", n, True) for n in ns], ("mmlu", "m1", 1, False))

    return [stub_questions, stub_eval]


def test_eval_complete_expects_the_n_values_launched_with(tmp_path, micro_config):
    cfg = load_config(micro_config({"eval": {"samples": [1, 2, 4], "benchmarks": {"gsm8k": {"limit": 1}, "mmlu": {"limit": 1}}}}))
    check = dg.AssetCheckKey(dg.AssetKey(["srlm_iter_0", "eval"]), "complete")
    assert materialize_with_check(tmp_path, cfg, eval_stubs([1, 2, 4]), check).passed
    # launched with other N: the run's N values are the ones expected, not the config's
    launched = {"ops": {"srlm_iter_0__eval": {"config": {"samples": [1, 8]}}}}
    assert materialize_with_check(tmp_path, cfg, eval_stubs([1, 8]), check, launched).passed
    failed = materialize_with_check(tmp_path, cfg, eval_stubs([1]), check, launched)
    assert not failed.passed
    assert failed.description == "gsm8k: 1 of 1 sampled questions lack rows (N = [8])"
