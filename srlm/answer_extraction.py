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
point). Taken: in the first sentence of the marked span (up to ".", "!", "?" or ";" before a space),
the first number after its last "=" ("The answer is 5 + 3 = 8." -> 8), else its first number ("The
answer is 18 dollars per day for 7 days." -> 18); else the last number of the final-answer text; else
the last number of the whole completion. Normalized: no "$" or thousands commas, no trailing
zeros after the decimal point ("72.00" -> "72", "0.50" -> "0.5"), "-0" -> "0".

Multiple choice (ARC, MMLU, HellaSwag; the labels are the question's own, "A".."E" or "1".."4").
*Naming* a label in running text: "(B)" or "[B]" standing alone (any case; "poly(A)tail" names none),
"option B" / "choice B" / "letter B" (any case), or a bare capital letter standing alone ("B" in "Bob",
"D.C." or "B's" is none). Bare digits and bare lowercase letters name nothing (numbers and articles are
everywhere). Two capitals are also English words: "I" before a lowercase word is the pronoun ("I think"),
and "A" opening a sentence before a lowercase word is the article ("A planet is ..."); before "is",
"was", "and", "or", "because" or "since" they name labels ("A is correct"). A capital ending a phrase
that an option holds ("vitamin C" with an option "Vitamin C") is that option's text, not a label.
The first rule that finds a label wins:
1. the marked span starts with a label, possibly after a hedge ("probably", "likely", "most likely",
   "definitely", "clearly", "certainly", "surely") and a label word: "Answer: B", "the answer is (b)",
   "answer is option C", "The answer is probably [B].";
2. the final-answer text is a label and nothing else, in any case: "B", "(b)", "[B]", "Option B", "**B**";
3. the last label called correct or chosen: "B is correct", "(B) was the right answer",
   "option B is right", "I choose B", "I'd pick (B)", "I will go with option B";
4. one label opens lines or sentences of the final-answer text, as "(B)", "[B]", "B)", "B.", "B:",
   "B," (before a space or the end), "b)", alone, or after "Option": "B) Mercury", "B. Mercury is
   closest." When different labels open lines or sentences ("A. Venus is wrong. B. Mercury is right.")
   the text lists options and this rule decides nothing;
5. the marked span (else the final-answer text) equals exactly one option's text (ignoring case,
   spacing, quotes, emphasis and a final period);
6. the last label the final-answer text names: "Not A, it is B." -> B, "A. Venus is wrong. B. Mercury
   is right." -> B (a list of options gives the last one it names);
7. the marked span (else the final-answer text) contains the words of exactly one option, not counting
   an option whose words lie inside another matching one ("Paris" inside "Paris, Texas");
8. rule 1 on the marked span of the whole completion (an answer stated inside the reasoning).
A lowercase letter after a marker needs punctuation or the end after it ("the answer is a good one"
finds nothing). Result: the label as the data writes it.

BBH: the answer form is read from the gold target (`answer_form`). The places looked at, in order:
the marked span, the final-answer text, the marked span of the whole completion.
- option "(A)".."(R)": the multiple-choice rules, with the options parsed from the input's
  "(A) text" lines; result "(B)";
- True/False, valid/invalid, Yes/No: the first of the two words in the first place holding one;
  result in the gold's casing ("True", "valid", "Yes" or "yes");
- number: as GSM8K;
- brackets and words first drop a *lead-in*: the first place's first line up to its last colon
  ("Sorted:", "The closing sequence is:"); when nothing follows the colon, the answer starts on the
  next line;
- brackets (dyck_languages): the bracket characters of the first line, separated by single spaces;
  when they start with the whole input sequence of the question (after "Input:"), the model wrote the
  completed sequence and only what follows the input is kept ("The completed sequence is [ ( ] )" for
  the input "[ (" -> "] )");
- words (word_sorting): the first line split at whitespace and commas, list markers ("1.", "-") and
  surrounding quotes dropped, lowercased, joined by single spaces; when that line holds a single word,
  the one-word-per-line list that starts there (up to a blank line);
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
# a sentence ends at ".", "!", "?" or ";" before a space or the end ("0.5" goes on)
_SENTENCE_END = re.compile(r"[.!?;](?=\s|$)")
_BINARY_FORMS = {"true/false": ("true", "false"), "valid/invalid": ("valid", "invalid"), "yes/no": ("yes", "no")}
_BBH_OPTION = re.compile(r"^\(([A-R])\)\s*(.*)$", re.MULTILINE)
_BRACKETS = re.compile(r"[()\[\]{}<>]")
_DECORATION = "*_`\"' \t"  # markdown emphasis and quotes around an answer

# multiple choice (rule numbers: module docstring)
_LABEL_PREFIX = re.compile(
    r"^(?:(?:most\s+)?(?:probably|likely)\s+|(?:definitely|clearly|certainly|surely)\s+)?(?:(?:option|choice|letter)\s+)?",
    re.IGNORECASE,
)
_LONE_LABEL = re.compile(r"(?:(?:option|choice)\s+)?[(\[]?([a-z0-9])[)\]]?", re.IGNORECASE)
# "(B)" or "[b]" standing alone | "option b" | a bare capital, not inside a word, "(A)tail", "D.C." or "B's"
_MENTION = re.compile(
    r"(?<!\w)(?:\(([A-Za-z0-9])\)|\[([A-Za-z0-9])\])(?!\w)"
    r"|\b(?i:option|choice|letter)\s+([A-Za-z0-9])(?![\w'’])"
    r"|(?<![\w.,$'’(\[-])([A-Z])(?![\w'’-]|[.,]\w)"
)
_LOWERCASE_WORD_NEXT = re.compile(r"\s+(?!(?:is|was|and|or|because|since)\b)[a-z]")
_LOOKBACK = 60  # characters before a label searched for the word or the choosing phrase that precedes it
_CALLED_CORRECT = re.compile(r"\s*(?:is|was)\s+(?:the\s+)?(?:correct|right)\b", re.IGNORECASE)
_CHOSEN_BY = re.compile(r"\bI(?:'d|'ll|\s+would|\s+will)?\s+(?:choose|pick|select|go\s+with)\s+$", re.IGNORECASE)
# a label opening a line or sentence: "(B)", "[B]", "B)", "B.", "B:", "B," (before a space or the end),
# "B" alone, "b)", each possibly after "Option"
_OPENING_LABEL = re.compile(
    r"(?:(?i:option|choice)\s+)?(?:[(\[]([A-Za-z0-9])[)\]]|([A-Z0-9])(?:[).:,](?=\s|$)|$)|([a-z])\))"
)
_PIECES = re.compile(r"\n|(?<=[.!?])\s+")  # lines and sentences


def final_answer_text(completion: str) -> str:
    """The part after the last </think> if there is one, else the whole text; stripped."""
    return completion.rsplit(THINK_CLOSE, 1)[-1].strip()


def _marked_span(text: str) -> str | None:
    """The text after the last answer marker up to the end of the line, or the next non-blank line
    when the marker ends its line (None without a marker)."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        return None
    return text[markers[-1].end() :].lstrip().split("\n", 1)[0].strip()


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


def _span_number(span: str) -> str | None:
    """In the span's first sentence, the first number after the last "=" (the result of "5 + 3 = 8"),
    else its first number."""
    sentence = _SENTENCE_END.split(span, 1)[0]
    return normalize_number(sentence.rsplit("=", 1)[-1]) or normalize_number(sentence)


def _extract_number(completion: str) -> str | None:
    final = final_answer_text(completion)
    span = _marked_span(final)
    if span and (number := _span_number(span)):
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


def _known(char: str, labels: tuple[str, ...]) -> str | None:
    return char.upper() if char.upper() in labels else None


def _label_at_start(span: str, labels: tuple[str, ...]) -> str | None:
    """Rule 1: a label opening the span, after a hedge or a label word ("B", "(b)", "[B]", "option C",
    "probably B", "B. text"), as a standalone token."""
    span = _LABEL_PREFIX.sub("", span.strip(_DECORATION), count=1)
    match = re.match(r"([(\[])?([A-Za-z0-9])([)\]])?(.?)", span)
    if not match:
        return None
    open_bracket, char, close_bracket, after = match.groups()
    if after.isalnum():
        return None
    if char.islower() and not (open_bracket or close_bracket) and after not in ("", ".", ",", ";", ":", "!", "?"):
        return None  # "the answer is a good one": an article, not a label
    return _known(char, labels)


def _lone_label(text: str, labels: tuple[str, ...]) -> str | None:
    """Rule 2: the final-answer text is a label and nothing else ("B", "(b)", "[B]", "Option B", "**B**")."""
    match = _LONE_LABEL.fullmatch(text.strip(_DECORATION + "."))
    return _known(match.group(1), labels) if match else None


def _mentions(text: str, labels: tuple[str, ...], choices: tuple[str, ...]) -> list[tuple[re.Match[str], str]]:
    """The labels `text` names, in order, with where it names them (module docstring, "naming")."""
    found = []
    option_words = [re.findall(r"\w+", choice) for choice in choices]
    for match in _MENTION.finditer(text):
        label = _known(next(g for g in match.groups() if g), labels)
        bare = match.group(4)
        if label and not (bare and (_is_a_word(text, match) or _ends_option_phrase(text, match, option_words))):
            found.append((match, label))
    return found


def _is_a_word(text: str, match: re.Match[str]) -> bool:
    """ "I" before a lowercase word is the pronoun ("I think"); "A" opening a sentence before one is the
    article ("A planet"); "A is correct" and "A and B" still name labels."""
    letter = match.group(4)
    if letter not in ("A", "I") or not _LOWERCASE_WORD_NEXT.match(text, match.end()):
        return False
    return letter == "I" or _opens_sentence(text, match.start())


def _opens_sentence(text: str, position: int) -> bool:
    """Whether only quotes or emphasis stand between `position` and the start of the text, a line, or a
    sentence ending in ".", "!", "?" or ":"."""
    while position > 0 and text[position - 1] in _DECORATION:
        position -= 1
    return position == 0 or text[position - 1] in ".!?:\n"


def _ends_option_phrase(text: str, match: re.Match[str], option_words: list[list[str]]) -> bool:
    """A capital ending a phrase that an option holds with that capital ("vitamin C" with a "Vitamin C"
    option) is that text."""
    before = _words(text[max(0, match.start() - _LOOKBACK) : match.start()])
    letter = match.group(4)
    return bool(before) and any(
        first.casefold() == before[-1] and second == letter for words in option_words for first, second in zip(words, words[1:])
    )


def _affirmed_label(text: str, labels: tuple[str, ...], choices: tuple[str, ...]) -> str | None:
    """Rule 3: the last label called correct ("B is correct", "option B is the right answer") or chosen
    ("I pick (B)", "I'd go with B")."""
    hits = []
    for match, label in _mentions(text, labels, choices):
        before = text[max(0, match.start() - _LOOKBACK) : match.start()]
        if _CALLED_CORRECT.match(text, match.end()) or _CHOSEN_BY.search(before):
            hits.append(label)
    return hits[-1] if hits else None


def _opening_label(text: str, labels: tuple[str, ...]) -> str | None:
    """Rule 4: the one label that opens lines or sentences ("B) Mercury", "B. Mercury is closest.");
    different ones opening several ("A. Venus ... B. Mercury ...") list the options and decide nothing."""
    opened = []
    for piece in _PIECES.split(text):
        match = _OPENING_LABEL.match(piece.strip(_DECORATION))
        if match and (label := _known(next(g for g in match.groups() if g), labels)):
            opened.append(label)
    return opened[0] if len(set(opened)) == 1 else None


def _label_by_exact_text(text: str, choices: tuple[str, ...], labels: tuple[str, ...]) -> str | None:
    """Rule 5: the one option whose text the answer equals."""
    exact = [i for i, choice in enumerate(choices) if _plain(choice) and _plain(choice) == _plain(text)]
    return labels[exact[0]] if len(exact) == 1 else None


def _last_named_label(text: str, labels: tuple[str, ...], choices: tuple[str, ...]) -> str | None:
    """Rule 6: the last label the text names ("Not A, it is B.")."""
    named = _mentions(text, labels, choices)
    return named[-1][1] if named else None


def _label_by_words(text: str, choices: tuple[str, ...], labels: tuple[str, ...]) -> str | None:
    """Rule 7: the one option whose words the answer contains."""
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
        or _lone_label(final, labels)
        or _affirmed_label(final, labels, choices)
        or _opening_label(final, labels)
        or _label_by_exact_text(span or final, choices, labels)
        or _last_named_label(final, labels, choices)
        or _label_by_words(span or final, choices, labels)
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
    if form == "brackets":
        return _closing_brackets(q, _after_lead_in(places[0]).split("\n", 1)[0])
    if form == "words":
        return _word_list(_after_lead_in(places[0]))
    return places[0].split("\n", 1)[0].strip(_DECORATION).rstrip(".") or None


def _after_lead_in(text: str) -> str:
    """The text without a lead-in that ends in a colon on its first line ("Sorted:", "The sorted list
    is:"); when nothing follows the colon, the text goes on at the next line."""
    first, _, rest = text.partition("\n")
    if ":" not in first:
        return text
    return f"{first.rsplit(':', 1)[1]}\n{rest}".strip()


def _closing_brackets(q: Question, line: str) -> str | None:
    """The line's brackets; a completed sequence that repeats the question's input ("[ ( ] )" for the
    input "[ (") keeps only what follows the input."""
    found = _BRACKETS.findall(line)
    given = _BRACKETS.findall(q.question.rsplit("Input:", 1)[1]) if "Input:" in q.question else []
    if given and found[: len(given)] == given:
        found = found[len(given) :]
    return " ".join(found) or None


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
