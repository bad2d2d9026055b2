from srlm.decontamination import Contamination, QuestionIndex, ngrams, normalize

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
WORDS = normalize(QUESTION).split()


def test_normalize_lowercases_and_collapses_non_alphanumerics():
    assert normalize("  Hello,   World!! It's 3:45 p.m.\n") == "hello world it s 3 45 p m"
    assert normalize("") == ""
    assert normalize("---") == ""
    assert normalize("snake_case__name") == "snake case name"
    # letters of any script are alphanumeric: they are kept, not erased
    assert normalize("Ünïcode CAFÉ, Ответ: 5!") == "ünïcode café ответ 5"


def test_ngrams_are_word_windows_of_the_normalized_text():
    assert ngrams("A b, C! d", 2) == {"a b", "b c", "c d"}
    assert ngrams("A b, C! d", 4) == {"a b c d"}
    assert ngrams("a b c", 4) == set()
    assert ngrams("x y x y x", 2) == {"x y", "y x"}  # a set: repeats collapse
    assert len(ngrams(QUESTION, 13)) == len(WORDS) - 12


def index(n=13):
    return QuestionIndex([("gsm8k/0", QUESTION), ("gsm8k/1", "What is two plus two?")], n)


def test_a_shared_13_gram_is_flagged_with_the_gram_as_evidence():
    shared = " ".join(WORDS[5:18])  # 13 consecutive words of the question
    text = f"Here is my own preamble. {shared.upper()}! And then something else entirely."
    found = index().check([("train/7", text)])
    assert found == [Contamination("train/7", "gsm8k/0", "ngram", shared)]


def test_twelve_shared_words_are_not_flagged():
    twelve = " ".join(WORDS[5:17])
    text = f"Here is my own preamble. {twelve} and then something else entirely."
    assert index().check([("train/8", text)]) == []
    # one more word of the question makes it a 13-gram
    assert index().check([("train/8", f"Preamble {' '.join(WORDS[5:18])} tail")])[0].kind == "ngram"


def test_exact_normalized_duplicate_is_exact_and_beats_ngram():
    text = "  " + QUESTION.upper().replace(" ", "   ").replace("?", " ??") + " "
    found = index().check([("train/1", text)])
    assert len(found) == 1
    assert found[0].kind == "exact" and found[0].question_id == "gsm8k/0"
    assert found[0].evidence == normalize(QUESTION)
    # a short question has no 13-grams at all, but an exact copy is still caught
    short = index().check([("train/2", "what is TWO plus two")])
    assert short == [Contamination("train/2", "gsm8k/1", "exact", "what is two plus two")]


def test_unrelated_and_empty_texts_are_clean_and_one_finding_per_text():
    texts = [
        ("a", "Describe a quiet garden in one sentence."),
        ("b", ""),
        ("c", "!!!"),
        ("d", f"{QUESTION} Also, {QUESTION}"),  # many shared grams, one finding
    ]
    found = index().check(texts)
    assert [(f.text_id, f.kind) for f in found] == [("d", "ngram")]


def test_first_question_wins_for_shared_grams_and_n_is_configurable():
    idx = QuestionIndex([("q1", "alpha beta gamma delta"), ("q2", "alpha beta gamma delta epsilon")], 3)
    assert idx.check([("t", "zeta alpha beta gamma")]) == [Contamination("t", "q1", "ngram", "alpha beta gamma")]
    assert idx.check([("t", "gamma delta epsilon")]) == [Contamination("t", "q2", "ngram", "gamma delta epsilon")]
    assert idx.check([("t", "alpha beta")]) == []


def test_non_latin_text_is_compared_not_erased():
    idx = QuestionIndex([("ru/0", "Ответ: 5"), ("ru/1", "Сколько будет два плюс два?")], 3)
    # different words around the same number are not a duplicate
    assert idx.check([("t1", "Вопрос: 5")]) == []
    assert idx.check([("t2", "сколько БУДЕТ два, плюс два")]) == [Contamination("t2", "ru/1", "exact", "сколько будет два плюс два")]
    assert idx.check([("t3", "Скажи, сколько будет два плюс три")]) == [Contamination("t3", "ru/1", "ngram", "будет два плюс")]
