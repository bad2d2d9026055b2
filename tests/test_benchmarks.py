"""Benchmark readers, sampling and protocol prompts: on the mini kit fixture, on malformed files, and
(marked `kit`) on the real offline kit."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from srlm.benchmarks import (
    BENCHMARKS,
    BenchmarkFormatError,
    Question,
    generation_messages,
    loglikelihood_requests,
    read_benchmark,
    sample_questions,
)
from srlm.kit import KitNotFound, find_data_kit

FIXTURES = Path(__file__).parent / "fixtures"
MINI_KIT = FIXTURES / "kit"
BAD = FIXTURES / "bad_eval"


@pytest.fixture(scope="module")
def mini() -> dict[str, list[Question]]:
    return {name: read_benchmark(name, MINI_KIT) for name in BENCHMARKS}


# ------------------------------------------------------------------------------------ readers, mini kit


def test_counts_and_unique_ids(mini):
    assert {name: len(qs) for name, qs in mini.items()} == {
        "gsm8k": 8,
        "arc_challenge": 8,
        "mmlu": 10,
        "hellaswag": 8,
        "bbh": 20,
    }
    for name, questions in mini.items():
        assert all(q.benchmark == name for q in questions)
        assert len({q.question_id for q in questions}) == len(questions)


def test_gsm8k_fields(mini):
    first, with_comma, negative = mini["gsm8k"][0], mini["gsm8k"][1], mini["gsm8k"][3]
    assert first.question_id == "gsm8k/0"
    assert first.question.startswith("Mia has 12 pencils.")
    assert (first.answer, first.choices, first.labels, first.gold_index, first.subset) == ("15", (), (), None, "")
    assert with_comma.answer == "1200"
    assert negative.answer == "-3"


def test_arc_fields_numeric_labels_and_choice_counts(mini):
    by_id = {q.question_id: q for q in mini["arc_challenge"]}
    q = by_id["arc_challenge/Mercury_7000001"]
    assert q.question == "Which property of a mineral can be determined just by looking at it?"
    assert q.choices == ("luster", "mass", "weight", "hardness")
    assert (q.labels, q.answer, q.gold_index) == (("A", "B", "C", "D"), "A", 0)
    numeric = by_id["arc_challenge/NYSEDREGENTS_2015_8_11"]
    assert (numeric.labels, numeric.answer, numeric.gold_index) == (("1", "2", "3", "4"), "2", 1)
    three = by_id["arc_challenge/MCAS_2004_5_9"]
    assert (three.labels, three.choices[three.gold_index]) == (("A", "B", "C"), "a graduated cylinder")
    assert len(by_id["arc_challenge/Mercury_7000005"].choices) == 5


def test_arc_other_split_gets_its_own_ids():
    dev = read_benchmark("arc_challenge", MINI_KIT, split="dev")
    assert [q.question_id for q in dev] == [
        "arc_challenge/dev/Mercury_7100001",
        "arc_challenge/dev/Mercury_7100002",
    ]


def test_mmlu_subjects_rows_and_multiline_field(mini):
    questions = mini["mmlu"]
    assert [q.subset for q in questions] == ["abstract_algebra"] * 5 + ["astronomy"] * 5
    assert questions[0].question_id == "mmlu/abstract_algebra/0"
    assert questions[0].choices == ("1", "2", "3", "6")
    assert (questions[0].answer, questions[0].gold_index) == ("B", 1)
    multi = questions[2]  # a quoted field over two lines, in a CRLF file
    assert multi.question == (
        "Statement 1 | Every group of order 4 is cyclic.\nStatement 2 | Every cyclic group is abelian."
    )
    assert multi.choices == ("True, True", "False, False", "True, False", "False, True")
    assert multi.question_id == "mmlu/abstract_algebra/2"
    assert questions[3].question_id == "mmlu/abstract_algebra/3"  # row index, not line number
    assert questions[4].choices[2] == "0,1"
    # kept as in the file (the harness strips it in its prompt)
    assert questions[8].question == " How long does light from the Sun take to reach Earth? "


def test_mmlu_dev_split():
    dev = read_benchmark("mmlu", MINI_KIT, split="dev")
    assert [q.question_id for q in dev] == ["mmlu/dev/abstract_algebra/0", "mmlu/dev/abstract_algebra/1"]


def test_hellaswag_groups_of_six(mini):
    questions = mini["hellaswag"]
    first = questions[0]
    assert first.question_id == "hellaswag/0"
    assert first.question == "Making tea: A woman fills a kettle with water and sets it on the stove. she"
    assert first.labels == ("A", "B", "C", "D")
    assert (first.answer, first.gold_index) == ("C", 2)
    assert first.choices[2] == "waits for the water to boil, then pours it over a tea bag in a cup."
    assert [q.answer for q in questions] == ["C", "A", "B", "D", "D", "B", "A", "C"]
    assert questions[-1].question_id == "hellaswag/7"


def test_bbh_tasks_sorted_and_targets_verbatim(mini):
    questions = mini["bbh"]
    tasks = list(dict.fromkeys(q.subset for q in questions))
    assert tasks == ["boolean_expressions", "date_understanding", "formal_fallacies", "word_sorting"]
    date = next(q for q in questions if q.subset == "date_understanding")
    assert date.question_id == "bbh/date_understanding/0"
    assert date.question.startswith("Today is the last day of March 2021.")
    assert (date.answer, date.choices, date.labels, date.gold_index) == ("(A)", (), (), None)
    assert {q.answer for q in questions if q.subset == "formal_fallacies"} == {"valid", "invalid"}


def test_unknown_benchmark_split_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="known: gsm8k, arc_challenge, mmlu, hellaswag, bbh"):
        read_benchmark("squad", MINI_KIT)
    with pytest.raises(ValueError, match="hellaswag has no split 'val'"):
        read_benchmark("hellaswag", MINI_KIT, split="val")
    with pytest.raises(FileNotFoundError, match="gsm8k/test.jsonl"):
        read_benchmark("gsm8k", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"mmlu/val/\*_val.csv"):
        read_benchmark("mmlu", MINI_KIT, split="val")


# ------------------------------------------------------------------------------------- malformed files


@pytest.mark.parametrize(
    ("case", "benchmark", "file", "where", "what"),
    [
        ("gsm8k_bad_json", "gsm8k", "gsm8k/test.jsonl", "line 3", "invalid JSON"),
        ("mmlu_columns", "mmlu", "mmlu/test/astronomy_test.csv", "row 2 (line 2)", "expected 6 columns"),
        ("hellaswag_truncated", "hellaswag", "hellaswag_val_full.txt.bz2", "line 7", "item 1 is truncated"),
        ("bbh_no_examples", "bbh", "bbh/date_understanding.json", "", '"examples"'),
        ("arc_bad_key", "arc_challenge", "arc_challenge/test.jsonl", "line 2", "answerKey 'E' is not among"),
    ],
)
def test_malformed_file_names_file_and_place(case, benchmark, file, where, what):
    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(benchmark, BAD / case)
    message = str(error.value)
    assert file in message and where in message and what in message


def test_corrupt_bz2_names_the_file():
    with pytest.raises(BenchmarkFormatError, match="hellaswag_val_full.txt.bz2: cannot read"):
        read_benchmark("hellaswag", BAD / "hellaswag_corrupt")


def test_bbh_item_without_target(tmp_path):
    bbh = tmp_path / "eval" / "bbh"
    bbh.mkdir(parents=True)
    (bbh / "navigate.json").write_text('{"examples": [{"input": "x", "target": "Yes"}, {"input": "y"}]}')
    with pytest.raises(BenchmarkFormatError, match=r"navigate.json, examples\[1\]: field 'target'"):
        read_benchmark("bbh", tmp_path)


# ---------------------------------------------------------------------------------------------- sampling


def test_sample_all_when_no_limit(mini):
    questions = mini["mmlu"]
    for limit in (None, 0, -1, len(questions), 99):
        assert sample_questions(questions, limit, seed=1) == questions


def test_sample_is_deterministic_ordered_and_nested(mini):
    questions = mini["gsm8k"] + mini["hellaswag"]
    small = sample_questions(questions, 4, seed=7)
    assert small == sample_questions(questions, 4, seed=7)
    assert len(small) == 4
    positions = [questions.index(q) for q in small]
    assert positions == sorted(positions)
    assert set(small) <= set(sample_questions(questions, 9, seed=7))
    assert {tuple(sample_questions(questions, 4, seed=s)) for s in range(10)} != {tuple(small)}


def test_sample_spreads_over_subsets(mini):
    bbh = mini["bbh"]
    for seed in range(5):
        picked = sample_questions(bbh, 4, seed)
        assert len({q.subset for q in picked}) == 4
        assert collections.Counter(q.subset for q in sample_questions(bbh, 8, seed)) == dict.fromkeys(
            ["boolean_expressions", "date_understanding", "formal_fallacies", "word_sorting"], 2
        )
    mmlu_two = sample_questions(mini["mmlu"], 2, seed=3)
    assert {q.subset for q in mmlu_two} == {"abstract_algebra", "astronomy"}


# ------------------------------------------------------------------------------------------------ prompts


def test_generation_messages_multiple_choice(mini):
    (message,) = generation_messages(mini["arc_challenge"][0])
    assert message["role"] == "user"
    assert message["content"] == (
        "Which property of a mineral can be determined just by looking at it?\n\n"
        "A. luster\nB. mass\nC. weight\nD. hardness\n\n"
        "Think step by step inside <think></think>, then write only the final answer: "
        "the letter of the correct option."
    )
    numeric = generation_messages(mini["arc_challenge"][2])[0]["content"]
    assert "1. respiratory\n2. digestive" in numeric and numeric.endswith("the number of the correct option.")


def test_generation_messages_open_forms(mini):
    gsm = generation_messages(mini["gsm8k"][0])[0]["content"]
    assert gsm.startswith("Mia has 12 pencils.") and gsm.endswith("write only the final answer: a number.")
    bbh = generation_messages(mini["bbh"][0])[0]["content"]
    assert bbh == (
        "not ( True ) and ( True ) is\n\nThink step by step inside <think></think>, then write only the final answer."
    )
    hellaswag = generation_messages(mini["hellaswag"][0])[0]["content"]
    assert hellaswag.startswith("Which ending completes the text best?\n\nMaking tea:")
    assert "\nC. waits for the water to boil" in hellaswag


def test_loglikelihood_arc(mini):
    q = mini["arc_challenge"][3]
    assert loglikelihood_requests(q) == [
        ("Question: Which tool is best for measuring the volume of a liquid?\nAnswer:", " a ruler"),
        ("Question: Which tool is best for measuring the volume of a liquid?\nAnswer:", " a graduated cylinder"),
        ("Question: Which tool is best for measuring the volume of a liquid?\nAnswer:", " a thermometer"),
    ]


def test_loglikelihood_mmlu_matches_harness_default(mini):
    q = mini["mmlu"][8]
    context = (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "How long does light from the Sun take to reach Earth?\n"
        "A. About 8 seconds\nB. About 8 minutes\nC. About 8 hours\nD. About 8 days\nAnswer:"
    )
    assert loglikelihood_requests(q) == [(context, " A"), (context, " B"), (context, " C"), (context, " D")]
    assert loglikelihood_requests(mini["mmlu"][0])[0][0].startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    )


def test_loglikelihood_hellaswag_and_open_forms(mini):
    q = mini["hellaswag"][1]
    requests = loglikelihood_requests(q)
    assert requests[0] == (q.question, " pushes off and pedals slowly down the driveway.")
    assert len(requests) == 4
    for name in ("gsm8k", "bbh"):
        with pytest.raises(ValueError, match="needs multiple choice"):
            loglikelihood_requests(mini[name][0])


# --------------------------------------------------------------------------------------------- real kit


@pytest.fixture(scope="module")
def kit() -> Path:
    try:
        return find_data_kit()
    except KitNotFound as e:
        pytest.skip(f"offline data kit not found: {e}")


def _check_ids_and_gold(questions: list[Question]) -> None:
    assert len({q.question_id for q in questions}) == len(questions)
    assert all(q.gold_index is None or q.labels[q.gold_index] == q.answer for q in questions)


@pytest.mark.kit
def test_real_gsm8k(kit):
    questions = read_benchmark("gsm8k", kit)
    assert len(questions) == 1319
    assert questions[0].answer == "18"
    _check_ids_and_gold(questions)


@pytest.mark.kit
def test_real_arc(kit):
    questions = read_benchmark("arc_challenge", kit)
    assert len(questions) == 1172
    assert collections.Counter(len(q.choices) for q in questions) == {4: 1165, 3: 4, 5: 3}
    assert sum(q.labels[0] == "1" for q in questions) == 22
    assert questions[0].question_id == "arc_challenge/Mercury_7175875"
    _check_ids_and_gold(questions)
    assert len(read_benchmark("arc_challenge", kit, "train")) == 1119
    assert len(read_benchmark("arc_challenge", kit, "dev")) == 299


@pytest.mark.kit
def test_real_mmlu(kit):
    test = read_benchmark("mmlu", kit)
    assert len(test) == 14042
    assert len({q.subset for q in test}) == 57
    assert test[0].question_id == "mmlu/abstract_algebra/0"
    assert not any("\r" in q.question or any("\r" in c for c in q.choices) for q in test)
    _check_ids_and_gold(test)
    assert len(read_benchmark("mmlu", kit, "dev")) == 285
    assert len(read_benchmark("mmlu", kit, "val")) == 1531


@pytest.mark.kit
def test_real_hellaswag(kit):
    questions = read_benchmark("hellaswag", kit)
    assert len(questions) == 10042
    assert collections.Counter(q.gold_index for q in questions) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert questions[0].question == "Roof shingle removal: A man is sitting on a roof. he"
    first = questions[0]
    assert loglikelihood_requests(first)[3] == (first.question, " starts pulling up roofing on a roof.")
    _check_ids_and_gold(questions)


@pytest.mark.kit
def test_real_bbh(kit):
    questions = read_benchmark("bbh", kit)
    assert len(questions) == 6511
    counts = collections.Counter(q.subset for q in questions)
    assert len(counts) == 27
    assert (counts["causal_judgement"], counts["penguins_in_a_table"], counts["snarks"]) == (187, 146, 178)
    _check_ids_and_gold(questions)
