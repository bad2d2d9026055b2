import math

import pytest
from conftest import FIXTURE_KIT, FakeEngine, engine_settings

from srlm.benchmarks import Question, generation_messages, loglikelihood_requests, read_benchmark
from srlm.engines.types import LogProb
from srlm.evaluation import (
    EvalSettings,
    acc_norm_choice,
    accuracy_at_smallest_n,
    evaluate,
    evaluate_generate,
    evaluate_loglikelihood,
)

ARC = Question("arc_challenge", "arc_challenge/q1", "", "Which is a planet?", ("Moon", "Mars", "Sun", "Comet"),
               ("A", "B", "C", "D"), "B", 1)
ARC_NUMBERED = Question("arc_challenge", "arc_challenge/q2", "", "Which is wet?", ("sand", "water", "rock"),
                        ("1", "2", "3"), "3", 2)
MMLU = Question("mmlu", "mmlu/algebra/0", "algebra", "2 + 2 = ?", ("3", "4", "5", "6"), ("A", "B", "C", "D"), "B", 1)
GSM = Question("gsm8k", "gsm8k/0", "", "Ada has 40 apples and gets 2 more. How many?", (), (), "42", None)
GSM2 = Question("gsm8k", "gsm8k/1", "", "What is 3 + 4?", (), (), "7", None)
BBH = Question("bbh", "bbh/boolean_expressions/0", "boolean_expressions", "not ( True ) and ( True ) is", (), (), "False", None)


def choice_table(q, totals_and_counts):
    return {req: LogProb(total, n) for req, (total, n) in zip(loglikelihood_requests(q), totals_and_counts)}


# ------------------------------------------------------------------------------------------ loglikelihood


def test_loglikelihood_picks_the_highest_total_logprob():
    table = {
        # B has the best total although C has the best mean (the harness's "acc" uses the total)
        **choice_table(ARC, [(-9.0, 3), (-4.0, 4), (-4.5, 9), (-7.0, 1)]),
        # wrong: the model prefers "1"
        **choice_table(ARC_NUMBERED, [(-1.0, 1), (-2.0, 1), (-3.0, 1)]),
        # tie between B and D: the first wins
        **choice_table(MMLU, [(-5.0, 1), (-2.0, 1), (-3.0, 1), (-2.0, 1)]),
    }
    engine = FakeEngine(logprobs=table)
    rows = evaluate_loglikelihood([ARC, ARC_NUMBERED, MMLU], engine, adapter="lora/m1")
    assert len(engine.logprob_calls) == 1
    requests, adapter = engine.logprob_calls[0]
    assert adapter == "lora/m1" and len(requests) == 4 + 3 + 4
    assert requests[:4] == loglikelihood_requests(ARC)
    assert [(r["question_id"], r["prediction"], r["correct"]) for r in rows] == [
        ("arc_challenge/q1", "B", True), ("arc_challenge/q2", "1", False), ("mmlu/algebra/0", "B", True)]
    first = rows[0]
    assert first["choice_logprobs"] == [-9.0, -4.0, -4.5, -7.0]
    assert first["completion"] == "Mars" and first["gold"] == "B" and first["sample_predictions"] == ["B"]
    assert (first["protocol"], first["n_samples"], first["benchmark"]) == ("loglikelihood", 1, "arc_challenge")
    assert rows[1]["gold"] == "3" and rows[1]["completion"] == "sand"
    # acc_norm divides by the option's length in characters: Mars -4/4 stays best, sand -1/4 too; MMLU's " A".." D"
    # are all one character long, so there acc_norm is acc
    assert [(r["prediction_norm"], r["correct_norm"]) for r in rows] == [("B", True), ("1", False), ("B", True)]


def test_acc_norm_can_disagree_with_acc():
    hella = Question("hellaswag", "hellaswag/7", "", "A man", ("ab", "abcd"), ("A", "B"), "B", 1)
    engine = FakeEngine(logprobs=choice_table(hella, [(-3.0, 2), (-5.5, 3)]))
    (row,) = evaluate_loglikelihood([hella], engine, None)
    assert (row["prediction"], row["correct"]) == ("A", False)  # -3.0 > -5.5
    assert (row["prediction_norm"], row["correct_norm"]) == ("B", True)  # -3.0/2 < -5.5/4


def test_acc_norm_choice_is_the_harness_rule():
    # per character of the choice, without the " " the continuation starts with: -1.5 vs -1.375 (dividing by the
    # continuation's length, " ab" and " abcd", would pick the first: -1.0 vs -1.1)
    assert acc_norm_choice([-3.0, -5.5], [" ab", " abcd"]) == 1
    # characters, not UTF-8 bytes: "éé" is 2 characters (4 bytes): -1.1 vs -1.0 (bytes would give -0.55 vs -1.0)
    assert acc_norm_choice([-2.2, -3.0], [" éé", " abc"]) == 1
    # ties: the first index, as np.argmax; a choice that starts with a space keeps it (only the delimiter goes)
    assert acc_norm_choice([-2.0, -2.0], [" ab", " cd"]) == 0
    assert acc_norm_choice([-2.0, -4.0], ["  b", " bbb"]) == 0  # " b" is 2 characters: -1.0 vs -1.33


def test_loglikelihood_without_questions_asks_nothing():
    engine = FakeEngine()
    assert evaluate_loglikelihood([], engine, None) == [] and engine.logprob_calls == []


# ------------------------------------------------------------------------------------------------ generate

SETTINGS = EvalSettings(samples=(5, 1, 3), temperature=0.8, top_p=0.9, max_new_tokens=64, seed=17)
COMPLETIONS = {
    generation_messages(GSM)[0]["content"]: [
        "<think>40 + 1 = 41</think>\nThe answer is 41.",  # wrong first sample
        "<think>40 + 2</think>\n42",
        "Ada has 40 + 2 = 42 apples.\n#### 42",
        "<think>I am not sure</think>\nno idea",  # nothing to extract
        "<think>40+2=42</think>\nThe answer is $42.00",
        "an unused sixth sample: 1",
    ],
    generation_messages(GSM2)[0]["content"]: ["Answer: 7", "8", "8", "8", "8"],
    generation_messages(BBH)[0]["content"]: ["<think>not True is False</think>\nFalse", "True", "true", "False", "The answer is False."],
}


def test_generate_votes_over_the_first_n_samples():
    engine = FakeEngine(completions=COMPLETIONS)
    rows = evaluate_generate([GSM, GSM2, BBH], engine, adapter=None, settings=SETTINGS)
    (prompts, params, adapter), = engine.generate_calls
    assert prompts == [generation_messages(q) for q in (GSM, GSM2, BBH)]
    assert (params.n, params.temperature, params.top_p, params.max_new_tokens, params.seed) == (5, 0.8, 0.9, 64, 17)
    assert adapter is None
    assert len(rows) == 3 * 3
    got = {(r["question_id"], r["n_samples"]): (r["prediction"], r["correct"]) for r in rows}
    assert got == {
        ("gsm8k/0", 1): ("41", False),
        ("gsm8k/0", 3): ("42", True),
        ("gsm8k/0", 5): ("42", True),
        ("gsm8k/1", 1): ("7", True),
        ("gsm8k/1", 3): ("8", False),
        ("gsm8k/1", 5): ("8", False),
        ("bbh/boolean_expressions/0", 1): ("False", True),
        ("bbh/boolean_expressions/0", 3): ("True", False),  # "True", "true" outvote "False"
        ("bbh/boolean_expressions/0", 5): ("False", True),
    }
    gsm_rows = [r for r in rows if r["question_id"] == "gsm8k/0"]
    assert [r["n_samples"] for r in gsm_rows] == [1, 3, 5]  # sorted N
    assert gsm_rows[2]["sample_predictions"] == ["41", "42", "42", None, "42"]
    assert gsm_rows[1]["sample_predictions"] == ["41", "42", "42"]
    # each row's completion is the first of its N that gave the vote
    texts = COMPLETIONS[generation_messages(GSM)[0]["content"]]
    assert [r["completion"] for r in gsm_rows] == [texts[0], texts[1], texts[1]]
    for r in gsm_rows:
        assert (r["protocol"], r["gold"], r["benchmark"], r["choice_logprobs"]) == ("generate", "42", "gsm8k", None)
        assert (r["prediction_norm"], r["correct_norm"]) == (None, None)


def test_generate_all_unreadable_answers_vote_none_and_are_wrong():
    engine = FakeEngine(completions={generation_messages(GSM)[0]["content"]: ["no idea"] * 3})
    rows = evaluate_generate([GSM], engine, "lora/x", EvalSettings((1, 3), 1.0, 1.0, 16, 0))
    assert [(r["prediction"], r["correct"], r["completion"]) for r in rows] == [(None, False, "no idea")] * 2
    assert engine.generate_calls[0][2] == "lora/x"
    assert evaluate_generate([], engine, None, SETTINGS) == [] and len(engine.generate_calls) == 1


def test_evaluate_dispatches_by_protocol_and_logs_accuracy_at_the_smallest_n():
    engine = FakeEngine(logprobs=choice_table(ARC, [(-9.0, 3), (-4.0, 4), (-4.5, 9), (-7.0, 1)]), completions=COMPLETIONS)
    logs = []
    rows = evaluate({"gsm8k": [GSM, GSM2], "arc_challenge": [ARC]}, {"gsm8k": "generate", "arc_challenge": "loglikelihood"},
                    engine, None, SETTINGS, log=logs.append)
    assert len(rows) == 2 * 3 + 1
    assert logs == ["gsm8k (generate): 2 questions, accuracy 0.500", "arc_challenge (loglikelihood): 1 questions, accuracy 1.000"]
    assert [r["protocol"] for r in rows] == ["generate"] * 6 + ["loglikelihood"]


def test_accuracy_at_the_smallest_n_of_each_benchmark():
    rows = [
        {"benchmark": "gsm8k", "n_samples": 4, "correct": True},
        {"benchmark": "gsm8k", "n_samples": 2, "correct": True},
        {"benchmark": "gsm8k", "n_samples": 2, "correct": False},
        {"benchmark": "gsm8k", "n_samples": 2, "correct": False},
        {"benchmark": "arc_challenge", "n_samples": 1, "correct": True},
    ]
    assert accuracy_at_smallest_n(rows) == {"arc_challenge": 1.0, "gsm8k": pytest.approx(1 / 3)}
    assert list(accuracy_at_smallest_n(rows)) == ["arc_challenge", "gsm8k"]  # sorted
    assert accuracy_at_smallest_n([]) == {}


# ------------------------------------------------------------------------------------ tiny real model


def test_evaluate_end_to_end_with_the_tiny_model():
    from tiny_model import tiny_model_dir

    from srlm.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir(), engine_settings(batch_size=8))
    questions = {
        "gsm8k": read_benchmark("gsm8k", FIXTURE_KIT)[:3],
        "arc_challenge": read_benchmark("arc_challenge", FIXTURE_KIT)[:2],
        "mmlu": read_benchmark("mmlu", FIXTURE_KIT)[:2],
    }
    protocols = {"gsm8k": "generate", "arc_challenge": "loglikelihood", "mmlu": "loglikelihood"}
    settings = EvalSettings(samples=(1, 2), temperature=1.0, top_p=1.0, max_new_tokens=8, seed=3)
    logs = []
    rows = evaluate(questions, protocols, engine, None, settings, log=logs.append)
    assert len(rows) == 3 * 2 + 2 + 2 and len(logs) == 3
    columns = {"benchmark", "question_id", "protocol", "n_samples", "prediction", "correct", "gold", "completion",
               "sample_predictions", "choice_logprobs", "prediction_norm", "correct_norm"}
    assert all(set(r) == columns for r in rows)
    gen = [r for r in rows if r["benchmark"] == "gsm8k"]
    assert [(r["question_id"], r["n_samples"]) for r in gen] == [(q.question_id, n) for q in questions["gsm8k"] for n in (1, 2)]
    for r, q in zip(gen, [q for q in questions["gsm8k"] for _ in (1, 2)]):
        assert r["gold"] == q.answer and len(r["sample_predictions"]) == r["n_samples"]
        assert isinstance(r["correct"], bool) and r["correct"] == (r["prediction"] == q.answer)
        assert isinstance(r["completion"], str)
    mc = [r for r in rows if r["protocol"] == "loglikelihood"]
    assert [r["question_id"] for r in mc] == [q.question_id for b in ("arc_challenge", "mmlu") for q in questions[b]]
    for r, q in zip(mc, questions["arc_challenge"] + questions["mmlu"]):
        assert len(r["choice_logprobs"]) == len(q.choices)
        assert all(math.isfinite(x) and x < 0 for x in r["choice_logprobs"])
        best = max(range(len(q.choices)), key=r["choice_logprobs"].__getitem__)
        assert r["prediction"] == q.labels[best] and r["correct"] == (best == q.gold_index)
        choice_text = q.labels if q.benchmark == "mmlu" else q.choices  # what the continuation says after " "
        norm = max(range(len(q.choices)), key=lambda i: r["choice_logprobs"][i] / len(choice_text[i]))
        assert r["prediction_norm"] == q.labels[norm] and r["correct_norm"] == (norm == q.gold_index)
    # deterministic: the same seed gives the same rows
    assert evaluate(questions, protocols, engine, None, settings) == rows
    again = evaluate_loglikelihood(questions["mmlu"], engine, None)
    flat = lambda rs: [x for r in rs for x in r["choice_logprobs"]]
    assert flat(again) == pytest.approx(flat(mc[2:]), abs=1e-4)  # batched with other questions or not
