"""Reading a model's answer out of a `generate` completion, and scoring it. These rules are part of the
product's contract: evaluation tables store what `extract_answer` returns and what `is_correct` says.

Common ground
- The *final-answer text* is what follows the last `</think>` (the whole completion when there is
  none), stripped.
- An *answer marker* is "answer is", "answer:", "answer would be", "option is", "choice is" (any case,
  e.g. "The correct answer is", "Final answer:") or "####". The *marked span* is the final-answer
  text after the last marker, up to the end of that line (the next non-blank line when the marker
  ends its line).
- Nothing usable gives None, which is never correct.

GSM8K and numeric BBH tasks (object_counting, multistep_arithmetic_two): a number, written like
"1,234", "$1,234.50", "-3", "0.5", "12 dollars", "5kg" or "72." (a trailing period is not a decimal
point). Taken: the first number of the marked span; else the last number of the final-answer text;
else the last number of the whole completion. Normalized: no "$" or thousands commas, no trailing
zeros after the decimal point ("72.00" -> "72", "0.50" -> "0.5"), "-0" -> "0".

Multiple choice (ARC, MMLU, HellaSwag; the labels are the question's own, "A".."E" or "1".."4").
The first rule that finds a label wins:
1. the marked span starts with a label: "Answer: B", "the answer is (b)", "answer is option C";
2. the first line of the final-answer text that starts with "(B)", or with "B)", "B.", "B:", "B,"
   before a space or the line end, or is just "B" (uppercase; lowercase only as "(b)" or "b)");
   a final-answer text that is one label character, in any case, counts too;
3. the last standalone "(B)" in the final-answer text ("poly(A)tail" has none);
4. option text: the marked span (else the final-answer text) equals exactly one option's text
   (ignoring case, spacing, quotes, emphasis and a final period), else contains the words of exactly
   one option, not counting an option whose words lie inside another matching one ("Paris" inside
   "Paris, Texas");
5. rule 1 on the marked span of the whole completion (an answer stated inside the reasoning).
A label is a standalone token: "B" in "Bob" is not. A lowercase letter after a marker needs
punctuation or the end after it ("the answer is a good one" finds nothing). Result: the label as the
data writes it.

BBH: the answer form is read from the gold target (`answer_form`). The places looked at, in order:
the marked span, the final-answer text, the marked span of the whole completion.
- option "(A)".."(R)": the multiple-choice rules, with the options parsed from the input's
  "(A) text" lines; result "(B)";
- True/False, valid/invalid, Yes/No: the first of the two words in the first place holding one;
  result in the gold's casing ("True", "valid", "Yes" or "yes");
- number: as GSM8K;
- brackets (dyck_languages): the bracket characters of the first place's first line, separated by
  single spaces;
- words (word_sorting): the first place's first line split at whitespace and commas, list markers
  ("1.", "-") and surrounding quotes dropped, lowercased, joined by single spaces; when that line
  holds a single word, the one-word-per-line list that starts there (up to a blank line);
- text (anything else): the first place's first line without quotes, emphasis or a final period.

Correctness compares normalized forms: numbers numerically as above; labels, options and the binary
words case-insensitively; words, brackets and text case-insensitively with whitespace collapsed.
"""

from __future__ import annotations

import re
from decimal import Decimal

from srlm.benchmarks import Question

THINK_CLOSE = "</think>"

_MARKER = re.compile(
    r"\b(?:(?:answer\s*(?:is|would\s+be)|(?:option|choice)\s+is)\b\s*:?|answer\s*:)|####", re.IGNORECASE
)
# sign, optional "$", digits with thousands commas or plain, decimals; never inside a word or a number
_NUMBER = re.compile(r"(?<![\w.])(-?)(?:\$\s?)?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
_BINARY_FORMS = {"true/false": ("true", "false"), "valid/invalid": ("valid", "invalid"), "yes/no": ("yes", "no")}
_BBH_OPTION = re.compile(r"^\(([A-R])\)\s*(.*)$", re.MULTILINE)
_BRACKETS = re.compile(r"[()\[\]{}<>]")
_DECORATION = "*_`\"' \t"  # markdown emphasis and quotes around an answer


def final_answer_text(completion: str) -> str:
    """The part after the last </think> if there is one, else the whole text; stripped."""
    return completion.rsplit(THINK_CLOSE, 1)[-1].strip()


def _marked_span(text: str) -> str | None:
    """The text after the last answer marker up to the end of the line, or the next non-blank line
    when the marker ends its line (None without a marker)."""
    last = None
    for last in _MARKER.finditer(text):
        pass
    if last is None:
        return None
    return text[last.end() :].lstrip().split("\n", 1)[0].strip()


def normalize_number(text: str) -> str | None:
    """The first number in `text`, normalized ("$1,234.50" -> "1234.5"); None when there is none."""
    match = _NUMBER.search(text)
    return _number_from_match(match) if match else None


def _number_from_match(match: re.Match[str]) -> str:
    sign, digits, decimals = match.groups()
    value = Decimal(sign + digits.replace(",", "") + (decimals or ""))
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _extract_number(completion: str) -> str | None:
    final = final_answer_text(completion)
    span = _marked_span(final)
    if span and (number := normalize_number(span)):
        return number
    for text in (final, completion):
        matches = list(_NUMBER.finditer(text))
        if matches:
            return _number_from_match(matches[-1])
    return None


# ----------------------------------------------------------------------------------- multiple choice


def _plain(text: str) -> str:
    """Text compared as a whole: casefolded, whitespace collapsed, no quotes, emphasis or final period."""
    return " ".join(text.casefold().split()).strip(_DECORATION).rstrip(".")


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.casefold()))


def _contains(words: tuple[str, ...], part: tuple[str, ...]) -> bool:
    n = len(part)
    return any(words[i : i + n] == part for i in range(len(words) - n + 1))


def _label_at_start(span: str, labels: tuple[str, ...]) -> str | None:
    """Rule 1: a label opening the span ("B", "(b)", "option C", "B. text"), as a standalone token."""
    span = re.sub(r"^(?:option|choice)\s+", "", span.strip(_DECORATION), flags=re.IGNORECASE)
    match = re.match(r"(\()?([A-Za-z0-9])(\))?(.?)", span)
    if not match:
        return None
    open_paren, char, close_paren, after = match.groups()
    if after.isalnum() or char.upper() not in labels:
        return None
    if char.islower() and not (open_paren or close_paren) and after not in ("", ".", ",", ";", ":", "!", "?"):
        return None  # "the answer is a good one": an article, not a label
    return char.upper()


def _label_on_line(text: str, labels: tuple[str, ...]) -> str | None:
    """Rule 2: a line opening with "(B)", "B)", "B.", "B:", "B,", or being just "B"."""
    stripped = text.strip(_DECORATION + ".")
    if len(stripped) == 1 and stripped.upper() in labels:
        return stripped.upper()
    for line in text.split("\n"):
        line = line.strip(_DECORATION)
        match = re.match(r"\(([A-Za-z0-9])\)|([A-Z0-9])(?:[).:,](?=\s|$)|$)|([a-z])\)", line)
        if match:
            char = next(g for g in match.groups() if g)
            if char.upper() in labels:
                return char.upper()
    return None


def _label_in_parens(text: str, labels: tuple[str, ...]) -> str | None:
    """Rule 3: the last standalone "(B)" anywhere ("poly(A)tail" has none)."""
    found = [m.group(1).upper() for m in re.finditer(r"(?<!\w)\(([A-Za-z0-9])\)(?!\w)", text)]
    found = [label for label in found if label in labels]
    return found[-1] if found else None


def _label_by_text(text: str, choices: tuple[str, ...], labels: tuple[str, ...]) -> str | None:
    """Rule 4: the one option the answer equals, else the one option whose words it contains."""
    exact = [i for i, choice in enumerate(choices) if _plain(choice) and _plain(choice) == _plain(text)]
    if len(exact) == 1:
        return labels[exact[0]]
    words = _words(text)
    options = [_words(c) for c in choices]
    hits = [i for i, option in enumerate(options) if option and _contains(words, option)]
    # "Paris, Texas" also contains "Paris": keep only the matches no other match contains
    hits = [i for i in hits if not any(options[j] != options[i] and _contains(options[j], options[i]) for j in hits)]
    return labels[hits[0]] if len(hits) == 1 else None


def _extract_label(completion: str, choices: tuple[str, ...], labels: tuple[str, ...]) -> str | None:
    labels = tuple(label.upper() for label in labels)
    final = final_answer_text(completion)
    span = _marked_span(final)
    whole_span = _marked_span(completion)
    return (
        (span and _label_at_start(span, labels))
        or _label_on_line(final, labels)
        or _label_in_parens(final, labels)
        or _label_by_text(span or final, choices, labels)
        or (whole_span and _label_at_start(whole_span, labels))
        or None
    )


# ------------------------------------------------------------------------------------------------ bbh


def answer_form(q: Question) -> str:
    """How a question's answer is written: "number" (gsm8k), "label" (ARC, MMLU, HellaSwag), or for BBH,
    read from the gold target: "option", "true/false", "valid/invalid", "yes/no", "number",
    "brackets", "words" (word_sorting) or "text"."""
    if q.benchmark == "gsm8k":
        return "number"
    if q.choices:
        return "label"
    target = q.answer.strip()
    if re.fullmatch(r"\([A-R]\)", target):
        return "option"
    for form, words in _BINARY_FORMS.items():
        if target.casefold() in words:
            return form
    if re.fullmatch(r"-?\d+(?:\.\d+)?", target):
        return "number"
    if q.subset == "word_sorting":
        return "words"
    if re.fullmatch(r"[)\]}>]+(?: [)\]}>]+)*", target):
        return "brackets"
    return "text"


def _bbh_options(q: Question) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, letters) of the "(A) text" option lines in a BBH input; all letters A-R when none."""
    found = _BBH_OPTION.findall(q.question)
    if not found:
        letters = tuple(chr(ord("A") + i) for i in range(18))
        return ("",) * len(letters), letters
    return tuple(text.strip() for _, text in found), tuple(letter for letter, _ in found)


def _binary_word(text: str, form: str) -> str | None:
    match = re.search(r"\b(" + "|".join(_BINARY_FORMS[form]) + r")\b", text, re.IGNORECASE)
    return match.group(1).casefold() if match else None


def _word_list(text: str) -> str | None:
    """The first line's words; when it holds a single word, the one-word-per-line list it starts
    (up to a blank line or a line of several words)."""
    lines = [_list_tokens(line) for line in text.strip().split("\n")]
    words = lines[0]
    if len(words) == 1:
        words = []
        for line in lines:
            if len(line) != 1:
                break
            words += line
    return " ".join(words) or None


def _list_tokens(line: str) -> list[str]:
    tokens = (t.strip("\"'`.;:!?*") for t in re.split(r"[\s,]+", line))
    return [t.casefold() for t in tokens if t and not re.fullmatch(r"\d+[.)]?|[-*•]", t)]


def _extract_bbh(q: Question, completion: str, form: str) -> str | None:
    if form == "option":
        label = _extract_label(completion, *_bbh_options(q))
        return f"({label})" if label else None
    if form == "number":
        return _extract_number(completion)
    final = final_answer_text(completion)
    span = _marked_span(final)
    # where to look, in order: the marked span, the final-answer text, an answer stated in the reasoning
    places = [text for text in (span, final, _marked_span(completion)) if text]
    if form in _BINARY_FORMS:
        word = next((w for text in places if (w := _binary_word(text, form))), None)
        return _in_gold_casing(word, q.answer.strip()) if word else None
    if not places:
        return None
    first_line = places[0].split("\n", 1)[0]
    if form == "brackets":
        return " ".join(_BRACKETS.findall(first_line)) or None
    if form == "words":
        return _word_list(places[0])
    return first_line.strip(_DECORATION).rstrip(".") or None


def _in_gold_casing(word: str, gold: str) -> str:
    return word if gold.islower() else word.capitalize()


# --------------------------------------------------------------------------------------------- public


def extract_answer(q: Question, completion: str) -> str | None:
    """The normalized prediction in `completion` for `q` (rules: module docstring); None if none."""
    form = answer_form(q)
    if form == "number":
        return _extract_number(completion)
    if form == "label":
        return _extract_label(completion, q.choices, q.labels)
    return _extract_bbh(q, completion, form)


def _normalized(form: str, text: str) -> str | None:
    text = text.strip()
    if form == "number":
        return normalize_number(text) if re.fullmatch(r"-?\$?[\d,]+(?:\.\d+)?", text) else None
    if form in ("label", "option"):
        return text.strip("()").upper()
    return " ".join(text.split()).casefold()


def is_correct(q: Question, prediction: str | None) -> bool:
    """Whether a prediction matches the gold answer, compared in normalized form (module docstring)."""
    if prediction is None:
        return False
    form = answer_form(q)
    expected = _normalized(form, q.answer)
    return expected is not None and _normalized(form, prediction) == expected
