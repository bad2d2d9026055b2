"""The rows and metadata the assets write, built without Dagster: training sets, checkpoints, candidates,
scores' inputs, selections and questions."""

from types import SimpleNamespace

import polars as pl
import pytest

from srlm.arms import chain, parse_arm
from srlm.benchmarks import Question, question_from_row, question_row
from srlm.checkpoint_rows import checkpoint_metadata, checkpoint_prefix, checkpoint_row
from srlm.evaluation import questions_by_benchmark
from srlm.expansion import candidates_metadata
from srlm.schemas import CHECKPOINTS, QUESTIONS, SELECTED, TRAINING_EXAMPLES, frame
from srlm.scoring import scoring_inputs
from srlm.selection import agreement, selection_metadata
from srlm.training_sets import chosen_rationales, training_metadata

STAGE = chain(parse_arm("srlm", "likelihood"), 1)[1]
REPORT = SimpleNamespace(final_loss=0.5, steps=10, seconds=12.34, truncated=1, loss_curve=[1.23456, 0.5])


def examples(*rows) -> pl.DataFrame:
    """rows: (task, example_id, rationale_id, rationale)"""
    return frame(({"task": t, "example_id": e, "rationale_id": r, "rationale": text, "instruction": f"do {e}", "input": "",
                   "response": f"answer {e}"} for t, e, r, text in rows), TRAINING_EXAMPLES)


def test_training_metadata_counts_tasks_and_rationales():
    df = examples(("answer", "e1", "e1", "ab"), ("answer", "e2", "e2", ""), ("enrich", "k1", None, "long one"))
    assert training_metadata(df) == {"answer_examples": 2, "enrich_examples": 1, "answers_with_rationale": 1, "mean_rationale_chars": 2.0}


def test_chosen_rationales_pair_each_selection_with_its_text():
    selected = frame([{"example_id": "e1", "candidate_id": "c2"}], SELECTED)
    candidates = pl.DataFrame({"candidate_id": ["c1", "c2"], "text": ["one", "two"]})
    assert chosen_rationales(selected, candidates) == {"e1": ("c2", "two")}


def test_checkpoint_row_records_its_origin():
    row = checkpoint_row("M1-abc", STAGE, {"checkpoint_id": "base-1"}, "/ckpt", "fp", REPORT, "run-1", {"checkpoint_id": "M0-x"}, 7)
    assert set(row) == set(CHECKPOINTS)
    assert (row["arm"], row["iteration"], row["init"], row["parent_checkpoint_id"], row["base_model"]) == ("srlm/likelihood", 1, "previous", "M0-x", "base-1")
    assert checkpoint_row("M1-abc", STAGE, {"checkpoint_id": "base-1"}, "/c", "fp", REPORT, "r", None, 7)["init"] == "base"
    assert checkpoint_metadata("M1-abc", REPORT)["loss_curve"] == [1.2346, 0.5]
    assert checkpoint_metadata("M1-abc", REPORT)["seconds"] == 12.3
    assert (checkpoint_prefix(STAGE), checkpoint_prefix(chain(parse_arm("sft", "length"), 0)[0])) == ("M1", "sft")


def test_candidates_metadata():
    df = pl.DataFrame({"n_tokens": [4, 8], "finish_reason": ["stop", "length"]})
    meta = candidates_metadata(df, 1, {"reused": 1, "generated": 2, "shards": 3})
    assert meta == {"examples": 1, "candidates": 2, "mean_tokens": 6.0, "cut_off_at_token_limit": 1, "shards_reused": 1, "shards_generated": 2}


def test_scoring_inputs_take_the_parents_of_the_expanded_examples_only():
    candidates = pl.DataFrame({"candidate_id": ["c1"], "example_id": ["e1"], "text": ["new"], "finish_reason": ["stop"]})
    previous = examples(("answer", "e1", "r1", "old"), ("answer", "e2", "r2", "other"), ("enrich", "e1", None, "catalyst"))
    items, references = scoring_inputs(candidates, previous)
    assert [(i.candidate_id, i.role, i.text) for i in items] == [("c1", "candidate", "new"), ("r1", "parent", "old")]
    assert list(references) == ["e1"] and references["e1"].output == "answer e1"


def test_selection_metadata_and_agreement():
    df = frame([{"example_id": "e1", "candidate_id": "c1", "score": 2.0, "parent_score": 1.0}], SELECTED)
    meta = selection_metadata(df, 4, "length", None)
    assert (meta["selection_rate"], meta["margin"], meta["mean_score"]) == (0.25, "none", 2.0)
    choices = pl.DataFrame({"example_id": ["e1"] * 3 + ["e2"] * 3, "candidate_id": ["a", "a", "a", "b", "c", "b"]})
    assert agreement(choices) == 1


@pytest.mark.parametrize("question", [
    Question("mmlu", "mmlu/x/0", "x", "Which?", ("a", "b"), ("A", "B"), "B", 1),
    Question("gsm8k", "gsm8k/0", "", "How many?", (), (), "4", None),
])
def test_question_rows_round_trip(question):
    row = question_row(question, "generate", True)
    assert set(row) == set(QUESTIONS) and question_from_row(row) == question
    table = frame([row, question_row(question, "generate", False) | {"question_id": "other"}], QUESTIONS)
    assert questions_by_benchmark(table, [question.benchmark, "bbh"]) == {question.benchmark: [question], "bbh": []}
