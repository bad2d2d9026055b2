"""Answer extraction and correctness on realistic completions (good, messy and unusable ones)."""

from __future__ import annotations

import pytest

from srlm.answer_extraction import answer_form, extract_answer, final_answer_text, is_correct, normalize_number
from srlm.benchmarks import Question, read_benchmark
from srlm.kit import KitNotFound, find_data_kit

GSM = Question("gsm8k", "gsm8k/0", "", "How much?", (), (), "1234", None)
MMLU = Question(
    "mmlu", "mmlu/astronomy/0", "astronomy", "Which planet is closest to the Sun?",
    ("Venus", "Mercury", "Mars", "Earth"), ("A", "B", "C", "D"), "B", 1,
)
ARC_NUMERIC = Question(
    "arc_challenge", "arc_challenge/X_1", "", "Which organ system breaks food down?",
    ("respiratory", "digestive", "nervous", "skeletal"), ("1", "2", "3", "4"), "2", 1,
)
CITIES = Question(
    "arc_challenge", "arc_challenge/X_2", "", "Where is the Eiffel Tower?",
    ("Paris", "Paris, Texas", "Lyon"), ("A", "B", "C"), "A", 0,
)
SIGNS = Question(
    "mmlu", "mmlu/college_mathematics/0", "college_mathematics", "Which is a square root of -1?",
    ("1", "-1", "i", "-i"), ("A", "B", "C", "D"), "C", 2,
)
VITAMINS = Question(
    "mmlu", "mmlu/nutrition/0", "nutrition", "Which vitamin prevents scurvy?",
    ("Vitamin C", "Vitamin D", "Iron", "Zinc"), ("A", "B", "C", "D"), "A", 0,
)
HELLASWAG = Question(
    "hellaswag", "hellaswag/0", "", "Making tea: A woman fills a kettle. she",
    ("throws the kettle away.", "paints the stove.", "waits for the water to boil.", "juggles oranges."),
    ("A", "B", "C", "D"), "C", 2,
)


def bbh(task: str, target: str, question: str = "") -> Question:
    return Question("bbh", f"bbh/{task}/0", task, question, (), (), target, None)


DATE = bbh(
    "date_understanding", "(B)",
    "Yesterday was 12/31/1999. What is the date today in MM/DD/YYYY?\n"
    "Options:\n(A) 12/30/1999\n(B) 01/01/2000\n(C) 01/01/1999\n(D) 12/31/2000",
)
BOOLEAN = bbh("boolean_expressions", "False", "not ( True ) and ( True ) is")
FALLACY = bbh("formal_fallacies", "invalid")
NAVIGATE = bbh("navigate", "Yes")
SPORTS = bbh("sports_understanding", "no")
COUNTING = bbh("object_counting", "12")
ARITHMETIC = bbh("multistep_arithmetic_two", "-35")
SORTING = bbh("word_sorting", "can't ox yak zebra")
DYCK = bbh("dyck_languages", "] ) >")
MOVIE = bbh("movie_recommendation", "Monsters, Inc")
DYCK_INPUT = bbh(
    "dyck_languages", "] )",
    "Complete the rest of the sequence, making sure that the parentheses are closed properly. Input: [ (",
)
MANY = bbh("logical_deduction_seven_objects", "(I)", "\n".join(f"({c}) item {c}" for c in "ABCDEFGHIJ"))


def test_final_answer_text():
    assert final_answer_text("<think>a</think> x </think>\n 42 \n") == "42"
    assert final_answer_text("  no tags here ") == "no tags here"
    assert final_answer_text("<think>unfinished reasoning") == "<think>unfinished reasoning"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$1,234.50", "1234.5"),
        ("72.00", "72"),
        ("-3", "-3"),
        ("0.50", "0.5"),
        ("-0", "0"),
        ("100", "100"),
        ("none", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


CASES = [
    # --- gsm8k: good
    (GSM, "<think>800 + 434 = 1234</think>\n1234", "1234"),
    (GSM, "<think>She earns 9 * 2 = 18 a day.</think>\nThe answer is 1,234.", "1234"),
    (GSM, "Step 1: 1000 + 234 = 1234\n#### 1,234", "1234"),
    (GSM, "<think>...</think>\nShe pays $1,234.50 in total.", "1234.5"),
    (GSM, "<think>6 * 2 = 12</think>\n12 dollars", "12"),
    (GSM, "<think>x</think>\nIt weighs 5kg.", "5"),
    (GSM, "<think>4 - 7 = -3</think>\nThe temperature is -3 degrees.", "-3"),
    (GSM, "<think>1 / 2</think>\n0.5", "0.5"),
    (GSM, "<think>x</think>\n72.00", "72"),
    (GSM, "The answer is 18 dollars per day for 7 days.", "18"),  # the marked span wins over the last number
    (GSM, "The answer is 5 + 3 = 8.", "8"),  # the result of the expression, not its first operand
    (GSM, "#### 1,000 + 234 = 1,234", "1234"),
    (GSM, "The answer is 2 * 3 = 6 = 1,234. Then 9 + 1 = 10.", "1234"),  # the last "=" of the first sentence
    (GSM, "The answer is 12. 5 + 3 = 8 was a check.", "12"),  # a later sentence's "=" does not count
    # --- gsm8k: messy / failing
    (GSM, "<think>3 + 4 = 7 apples</think>\nSo she has seven apples.", "7"),  # no number after </think>
    (GSM, "<think>I am not sure.</think>\nI cannot tell.", None),
    (GSM, "", None),
    (GSM, "so 10 - 5", "5"),  # a spaced minus is an operator, not a sign
    # --- multiple choice: good
    (MMLU, "<think>Mercury orbits closest.</think>\nB", "B"),
    (MMLU, "<think>x</think>\nAnswer: B", "B"),
    (MMLU, "The answer is b", "B"),
    (MMLU, "<think>x</think>\n(B)", "B"),
    (MMLU, "<think>x</think>\nB) Mercury", "B"),
    (MMLU, "<think>x</think>\nB. Mercury is the closest planet.", "B"),
    (MMLU, "<think>x</think>\n**B**", "B"),
    (MMLU, "The correct answer is option C.", "C"),
    (MMLU, "<think>x</think>\nBetween the two I pick (B).", "B"),
    (MMLU, "<think>x</think>\nMercury", "B"),  # option text
    (MMLU, "<think>It must be Mercury, so the answer is B.</think>\n", "B"),  # stated in the reasoning
    (ARC_NUMERIC, "<think>Food is digested.</think>\n2", "2"),
    (ARC_NUMERIC, "The answer is 2.", "2"),
    (CITIES, "<think>x</think>\nParis, Texas", "B"),  # "Paris" lies inside the longer match
    (CITIES, "<think>x</think>\nIt is in Paris.", "A"),
    (SIGNS, "<think>i * i = -1</think>\ni", "C"),  # the whole text equals an option
    (SIGNS, "<think>x</think>\n-i", "D"),
    (MMLU, "<think>x</think>\nMercury, as in poly(A)tail notation", "B"),  # "(A)" inside a word is no label
    (HELLASWAG, "<think>Tea needs hot water.</think>\nC", "C"),
    (HELLASWAG, "<think>x</think>\nShe waits for the water to boil.", "C"),
    # multiple choice: hedges, brackets, verdicts, choices, lists (module docstring, rules 1-6)
    (MMLU, "<think>x</think>\nThe answer is probably B.", "B"),  # rule 1 after a hedge
    (MMLU, "The answer is most likely [C]", "C"),
    (MMLU, "<think>x</think>\n[B]", "B"),  # rule 2
    (MMLU, "<think>x</think>\nOption B", "B"),
    (MMLU, "<think>x</think>\noption d.", "D"),
    (MMLU, "<think>x</think>\nB is correct.", "B"),  # rule 3
    (MMLU, "<think>x</think>\nA is the correct answer.", "A"),  # "A is": a label, not the article
    (MMLU, "<think>x</think>\nA is wrong, option B is right.", "B"),
    (MMLU, "<think>x</think>\nI choose B.", "B"),
    (MMLU, "<think>x</think>\nAfter checking each one, I'd go with (D) here.", "D"),
    (MMLU, "<think>x</think>\nI pick A rather than C.", "A"),  # chosen beats the last named
    (MMLU, "<think>x</think>\nB) Mercury, not A.", "B"),  # rule 4: the one opening label beats the last named
    (MMLU, "<think>x</think>\nNot A, it is B.", "B"),  # rule 6
    (MMLU, "<think>x</think>\nA. Venus is wrong. B. Mercury is right.", "B"),  # a list: the last named
    (MMLU, "<think>x</think>\nSo it must be B.", "B"),
    # the article and the pronoun are no labels
    (MMLU, "<think>x</think>\nA planet near the Sun is hot.", None),
    (MMLU, "<think>x</think>\nMercury. A small planet.", "B"),  # rule 7: Mercury
    (MMLU, "<think>x</think>\nI think so.", None),
    (ARC_NUMERIC, "<think>x</think>\nIt takes 2 steps.", None),  # bare digits name no label
    (ARC_NUMERIC, "<think>x</think>\nNot (1), it is (2).", "2"),
    (VITAMINS, "<think>x</think>\nYou need vitamin C for that.", "A"),  # option text, not label C
    (VITAMINS, "<think>x</think>\nThe letter is C.", "C"),
    # --- multiple choice: failing
    (MMLU, "<think>x</think>\nThe answer is a good one.", None),  # an article, not a label
    (MMLU, "<think>x</think>\nI do not know.", None),
    (MMLU, "<think>x</think>\nE", None),  # not a label of this question
    (MMLU, "<think>x</think>\nVenus or Mars", None),  # two options named
    (ARC_NUMERIC, "<think>x</think>\nB", None),  # letters are not this item's labels
    # --- bbh
    (DATE, "<think>Tomorrow of 12/31 is 01/01.</think>\nSo the answer is (B).", "(B)"),
    (DATE, "<think>x</think>\nB", "(B)"),
    (DATE, "<think>x</think>\n01/01/2000", "(B)"),
    (DATE, "<think>x</think>\nNone of them.", None),
    (DATE, "<think>x</think>\nI think it is B.", "(B)"),
    (MANY, "<think>x</think>\nI think it is (J).", "(J)"),  # "I" is a label here, but not the pronoun
    (MANY, "<think>x</think>\nNot J, it is I.", "(I)"),
    (BOOLEAN, "<think>not True is False.</think>\nFalse", "False"),
    (BOOLEAN, "Let's think step by step. not ( True ) = False. So the answer is False.", "False"),
    (BOOLEAN, "<think>x</think>\nfalse.", "False"),
    (BOOLEAN, "<think>x</think>\nmaybe", None),
    (FALLACY, "<think>Premise 2 does not follow.</think>\nThe argument is invalid.", "invalid"),
    (FALLACY, "<think>x</think>\nvalid", "valid"),
    (NAVIGATE, "<think>x</think>\nyes, you end where you started", "Yes"),
    (SPORTS, "<think>x</think>\nNo.", "no"),
    (COUNTING, "<think>2 + 4 + 6 = 12</think>\nI have 12 instruments.", "12"),
    (ARITHMETIC, "<think>(-1 + 2) - 36</think>\nSo the answer is -35.", "-35"),
    (SORTING, "<think>c < o < y < z</think>\ncan't ox yak zebra", "can't ox yak zebra"),
    (SORTING, "<think>x</think>\nCan't, ox, yak, zebra.", "can't ox yak zebra"),
    (SORTING, "<think>x</think>\n1. can't\n2. ox\n3. yak\n4. zebra\n\nDone.", "can't ox yak zebra"),
    (DYCK, "<think>close them</think>\n] ) >", "] ) >"),
    (DYCK, "So the answer is ])>.", "] ) >"),
    (DYCK, "<think>x</think>\nnothing", None),
    (DYCK_INPUT, "<think>x</think>\nThe completed sequence is [ ( ] )", "] )"),  # the input is dropped
    (DYCK_INPUT, "The closing sequence (for the input): ] )", "] )"),  # the lead-in is dropped
    (DYCK_INPUT, "So the answer is ] ).", "] )"),
    (SORTING, "<think>x</think>\nSorted: can't ox yak zebra", "can't ox yak zebra"),
    (SORTING, "<think>x</think>\nThe sorted list is: can't, ox, yak, zebra.", "can't ox yak zebra"),
    (SORTING, "<think>x</think>\nSorted list:\n- can't\n- ox\n- yak\n- zebra", "can't ox yak zebra"),
    (MOVIE, "<think>x</think>\n\"Monsters, Inc.\"", "Monsters, Inc"),
    (MOVIE, "<think>x</think>\nFinal answer:\nMonsters, Inc", "Monsters, Inc"),  # the span is the next line
]


@pytest.mark.parametrize(("q", "completion", "expected"), CASES)
def test_extract_answer(q, completion, expected):
    prediction = extract_answer(q, completion)
    assert prediction == expected
    if expected is not None:
        assert extract_answer(q, prediction) == prediction  # normalized predictions read back unchanged


def test_answer_forms():
    assert [answer_form(q) for q in (GSM, MMLU, DATE, BOOLEAN, FALLACY, NAVIGATE, SPORTS)] == [
        "number", "label", "option", "true/false", "valid/invalid", "yes/no", "yes/no",
    ]
    assert [answer_form(q) for q in (COUNTING, SORTING, DYCK, MOVIE)] == ["number", "words", "brackets", "text"]


def test_is_correct_compares_normalized_forms():
    assert not is_correct(GSM, None)
    assert is_correct(GSM, "1,234") and is_correct(GSM, "1234.00") and not is_correct(GSM, "1235")
    assert not is_correct(GSM, "about 1234")  # a prediction is a number, not text holding one
    assert is_correct(MMLU, "b") and not is_correct(MMLU, "C")
    assert is_correct(DATE, "(b)") and is_correct(DATE, "B")
    assert is_correct(BOOLEAN, "false") and not is_correct(BOOLEAN, "True")
    assert is_correct(SORTING, "Can't  OX yak zebra")
    assert is_correct(DYCK, "]  )  >")


@pytest.mark.kit
def test_gold_targets_read_back_on_the_real_kit():
    """Every gold answer of the kit, written as a model would, extracts to a correct prediction."""
    try:
        kit = find_data_kit()
    except KitNotFound as e:
        pytest.skip(f"offline data kit not found: {e}")
    for name in ("bbh", "arc_challenge", "gsm8k"):
        for q in read_benchmark(name, kit):
            for completion in (q.answer, f"<think>Let me work it out.</think>\nThe answer is {q.answer}."):
                assert is_correct(q, extract_answer(q, completion)), (q.question_id, completion)
