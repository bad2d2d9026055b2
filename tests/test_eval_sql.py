"""The evaluation summaries (sql/eval_summary.sql, sql/eval_scaling.sql) on small hand-made `evals` tables."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from srlm.sqlfiles import run_sql
from srlm.voting import majority_vote

CHECKPOINTS = {-1: "base-0", 0: "M0-a", 1: "M1-b"}
ARMS = {-1: "base", 0: "srlm", 1: "srlm/likelihood"}


def rows(iteration: int, benchmark: str, protocol: str, n: int, correct: list[bool],
         correct_norm: list[bool] | None = None) -> list[dict]:
    """evals rows; correct_norm is null unless given (the generate protocol has none)."""
    norms = correct_norm if correct_norm is not None else [None] * len(correct)
    return [
        {"checkpoint_id": CHECKPOINTS[iteration], "arm": ARMS[iteration], "iteration": iteration, "benchmark": benchmark, "protocol": protocol,
         "question_id": f"{benchmark}/{i}", "n_samples": n, "correct": ok, "correct_norm": norm}
        for i, (ok, norm) in enumerate(zip(correct, norms, strict=True))
    ]


def table(all_rows: list[dict]) -> pa.Table:
    shuffled = list(all_rows)
    random.Random(0).shuffle(shuffled)  # the queries order their output themselves
    return pa.Table.from_pylist(shuffled)


# gsm8k (generate, N = 1 and 4, 4 questions) and arc_challenge (loglikelihood, N = 1, 2 questions):
# (accuracy at N=1, accuracy at N=4) per iteration
GSM = {-1: ([1, 0, 0, 0], [1, 1, 0, 0]), 0: ([1, 1, 0, 0], [1, 1, 1, 0]), 1: ([0, 0, 0, 1], [1, 1, 1, 1])}
ARC = {-1: [0, 0], 0: [1, 0], 1: [1, 1]}
ARC_NORM = {-1: [1, 0], 0: [1, 1], 1: [0, 1]}  # acc_norm's verdicts on the same questions


def summary_input() -> pa.Table:
    out = []
    for t, (at_1, at_4) in GSM.items():
        out += rows(t, "gsm8k", "generate", 1, [bool(x) for x in at_1])
        out += rows(t, "gsm8k", "generate", 4, [bool(x) for x in at_4])
    for t, correct in ARC.items():
        out += rows(t, "arc_challenge", "loglikelihood", 1, [bool(x) for x in correct], [bool(x) for x in ARC_NORM[t]])
    return table(out)


def test_summary_accuracy_per_checkpoint_and_benchmark_with_intervals():
    got = run_sql("eval_summary", {"evals": summary_input()}).to_pylist()
    columns = ("checkpoint_id", "arm", "iteration", "benchmark", "protocol", "questions", "accuracy", "accuracy_norm",
               "max_samples", "accuracy_at_max_samples", "delta_base")
    assert [tuple(r[c] for c in columns[:6]) for r in got] == [
        ("base-0", "base", -1, "arc_challenge", "loglikelihood", 2),
        ("M0-a", "srlm", 0, "arc_challenge", "loglikelihood", 2),
        ("M1-b", "srlm/likelihood", 1, "arc_challenge", "loglikelihood", 2),
        ("base-0", "base", -1, "gsm8k", "generate", 4),
        ("M0-a", "srlm", 0, "gsm8k", "generate", 4),
        ("M1-b", "srlm/likelihood", 1, "gsm8k", "generate", 4),
    ]
    numbers = [tuple(r[c] for c in columns[6:]) for r in got]
    expected = [
        # accuracy (smallest N), accuracy_norm, max N, accuracy at max N, delta vs base
        (0.0, 0.5, 1, 0.0, None),  # the base model has no base to compare with
        (0.5, 1.0, 1, 0.5, 0.5),
        (1.0, 0.5, 1, 1.0, 1.0),
        (0.25, None, 4, 0.5, None),  # generate: no acc_norm
        (0.5, None, 4, 0.75, 0.25),
        (0.25, None, 4, 1.0, 0.0),  # the base model's accuracy at N=1, a gain at N=4
    ]
    assert numbers == [tuple(pytest.approx(x) if x is not None else None for x in row) for row in expected]
    # the Wilson interval of 1 correct out of 4: [0.046, 0.699] (textbook value), around but not centred on 0.25
    gsm_base = got[3]
    assert (gsm_base["accuracy_low"], gsm_base["accuracy_high"]) == (pytest.approx(0.0456, abs=1e-3), pytest.approx(0.6994, abs=1e-3))
    assert all(r["accuracy_low"] - 1e-12 <= r["accuracy"] <= r["accuracy_high"] + 1e-12 for r in got)


def test_summary_accuracy_is_at_the_smallest_n_when_it_is_not_one():
    evals = table(rows(-1, "gsm8k", "generate", 2, [True, False]) + rows(-1, "gsm8k", "generate", 8, [True, True]))
    (row,) = run_sql("eval_summary", {"evals": evals}).to_pylist()
    assert (row["accuracy"], row["max_samples"], row["accuracy_at_max_samples"]) == (0.5, 8, 1.0)
    assert row["accuracy_norm"] is None  # generate rows only: correct_norm is null throughout


# sampled answers per question (gold "7"), in sampling order: the row of N votes over the first N
SAMPLES = {
    "q0": ["7", "3", "3", "3"],  # N=1 right, N=2 tie -> "7" right, N=4 "3" wrong
    "q1": [None, "7", "5", "7"],  # N=1 None wrong, N=2 right, N=4 right
    "q2": ["5", "5", "7", "7"],  # N=1 wrong, N=2 wrong, N=4 tie -> "5" wrong
}


def voted_rows(iteration: int, ns: tuple[int, ...]) -> list[dict]:
    out = []
    for n in ns:
        for qid, preds in SAMPLES.items():
            vote = majority_vote(preds[:n])
            out.append({"checkpoint_id": CHECKPOINTS[iteration], "arm": ARMS[iteration], "iteration": iteration, "benchmark": "gsm8k",
                        "protocol": "generate", "question_id": qid, "n_samples": n, "prediction": vote,
                        "correct": vote == "7", "sample_predictions": preds[:n]})
    return out


def test_scaling_accuracy_vs_n_of_the_majority_votes():
    loglikelihood = [{"checkpoint_id": "M0-a", "arm": "srlm", "iteration": 0, "benchmark": "mmlu", "protocol": "loglikelihood",
                      "question_id": "mmlu/0", "n_samples": 1, "prediction": "A", "correct": True, "sample_predictions": ["A"]}]
    evals = table(voted_rows(0, (1, 2, 4)) + voted_rows(-1, (1, 4)) + loglikelihood)
    got = run_sql("eval_scaling", {"evals": evals}).to_pylist()
    assert [(r["checkpoint_id"], r["iteration"], r["benchmark"], r["n_samples"], r["questions"]) for r in got] == [
        ("base-0", -1, "gsm8k", 1, 3),
        ("base-0", -1, "gsm8k", 4, 3),
        ("M0-a", 0, "gsm8k", 1, 3),
        ("M0-a", 0, "gsm8k", 2, 3),
        ("M0-a", 0, "gsm8k", 4, 3),
    ]  # loglikelihood rows are deterministic (N = 1 only) and stay out
    assert [r["accuracy"] for r in got] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3, 1 / 3])
