"""Benchmark readers for the offline data kit, sampling, and the prompts of both evaluation protocols.

Each reader turns one benchmark's files (layout and formats: the kit's README, section "eval/") into
`Question`s. A malformed file raises `BenchmarkFormatError` naming the file, where in it (1-based line
or row, or the JSON index of the item) and what is wrong.

Question ids are stable and unique across the kit: `gsm8k/17` (0-based line), `arc_challenge/<id>`,
`mmlu/<subject>/3` (0-based row), `hellaswag/123` (0-based item), `bbh/<task>/5` (index in "examples").
Splits other than "test" put the split after the benchmark (`mmlu/dev/<subject>/3`), so ids of
different splits never collide.

Protocols:
- `generate` (`generation_messages`): one zero-shot user message; the model reasons inside
  <think></think> and then writes the answer, which `srlm.answer_extraction` reads back.
- `loglikelihood` (`loglikelihood_requests`): one (context, continuation) per choice, formatted like
  EleutherAI lm-evaluation-harness's default tasks so per-question choices can be compared with it.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import io
import json
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from srlm.datasets import utf8_text
from srlm.registry import BENCHMARK_NAMES, BENCHMARKS

_MMLU_LABELS = ("A", "B", "C", "D")
_HELLASWAG_LINES_PER_ITEM = 6  # context, gold label 0-3, four endings


@dataclass(frozen=True)
class Question:
    """One benchmark item, in the same shape for every benchmark."""

    benchmark: str
    question_id: str
    subset: str  # mmlu subject, bbh task, "" otherwise
    question: str  # stem / context / input, without the options
    choices: tuple[str, ...]  # option texts for multiple choice, () otherwise
    labels: tuple[str, ...]  # option labels as the data has them ("A".., or "1".. in some ARC items)
    answer: str  # gsm8k: final number without commas; multiple choice: gold label; bbh: target as written
    gold_index: int | None  # index of the gold option in choices, None without choices


class BenchmarkFormatError(ValueError):
    """A benchmark file does not have the expected format; the message says where and what."""


# ---------------------------------------------------------------------------------------------- readers


def read_benchmark(name: str, kit_dir: Path, split: str = "test") -> list[Question]:
    """All questions of one benchmark of the kit at `kit_dir`, in file order.

    Files read (under `kit_dir/eval/`):
    - gsm8k: `gsm8k/test.jsonl`
    - arc_challenge: `arc_challenge/{split}.jsonl` (split test | train | dev)
    - mmlu: `mmlu/{split}/*_{split}.csv`, subjects in sorted order (split test | dev | val); header-less
      rows of question, A, B, C, D, answer letter; a CRLF inside a quoted field becomes LF
    - hellaswag: `hellaswag/hellaswag_val_full.txt.bz2`. Only split "test" is accepted and it means this
      validation file: HellaSwag's real test labels are not public, and the validation set is what
      everyone reports (lm-evaluation-harness included).
    - bbh: `bbh/*.json`, tasks in sorted order (the `cot-prompts/` folder is not read)

    Text is UTF-8 (a leading byte-order mark is skipped). Raises ValueError for an unknown benchmark or
    split, FileNotFoundError for a missing file and BenchmarkFormatError for a malformed one, or for
    files that hold no questions.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARK_NAMES)}")
    if split not in BENCHMARKS[name].splits:
        raise ValueError(f"{name} has no split {split!r}; available: {', '.join(BENCHMARKS[name].splits)}")
    eval_dir = Path(kit_dir) / "eval"
    prefix = name if split == "test" else f"{name}/{split}"
    questions = READERS[name](eval_dir, split, prefix)
    if not questions:
        raise BenchmarkFormatError(f"{eval_dir / name}: {name} ({split}) holds no questions: its files are empty")
    return questions


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    return path


def _decode(data: bytes, path: Path) -> str:
    return utf8_text(data, str(path), BenchmarkFormatError)


def _json(text: str, where: str) -> object:
    """json.loads; errors name `where` (the file and line the text starts at)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{where}: invalid JSON ({e.msg})") from e
    except RecursionError:
        raise BenchmarkFormatError(f"{where}: invalid JSON (nested too deeply to read)") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(0-based line index, object) for every non-blank line (lines end in LF, CRLF or CR)."""
    for index, line in enumerate(io.StringIO(_decode(path.read_bytes(), path), newline=None)):
        if not line.strip():
            continue
        obj = _json(line, f"{path}, line {index + 1}")
        if not isinstance(obj, dict):
            raise BenchmarkFormatError(f"{path}, line {index + 1}: expected a JSON object")
        yield index, obj


def _str_field(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise BenchmarkFormatError(f"{where}: field {key!r} is missing or not a string")
    return value


def _read_gsm8k(path: Path, prefix: str) -> list[Question]:
    questions = []
    for index, obj in _jsonl(path):
        where = f"{path}, line {index + 1}"
        solution = _str_field(obj, "answer", where)
        if "####" not in solution:
            raise BenchmarkFormatError(f"{where}: the answer has no '#### <final answer>'")
        final = solution.rsplit("####", 1)[1].strip().replace(",", "")
        if not re.fullmatch(r"-?\d+(?:\.\d+)?", final):
            raise BenchmarkFormatError(f"{where}: the final answer {final!r} is not a number")
        questions.append(
            Question("gsm8k", f"{prefix}/{index}", "", _str_field(obj, "question", where), (), (), final, None)
        )
    return questions


def _read_arc(path: Path, prefix: str) -> list[Question]:
    questions = []
    for index, obj in _jsonl(path):
        where = f"{path}, line {index + 1}"
        body = obj.get("question")
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise BenchmarkFormatError(f"{where}: expected question.choices, a list of {{text, label}}")
        texts = tuple(_str_field(c, "text", where) for c in choices)
        labels = tuple(_str_field(c, "label", where) for c in choices)
        key = _str_field(obj, "answerKey", where)
        if key not in labels:
            raise BenchmarkFormatError(f"{where}: answerKey {key!r} is not among the labels {list(labels)}")
        questions.append(
            Question(
                "arc_challenge",
                f"{prefix}/{_str_field(obj, 'id', where)}",
                "",
                _str_field(body, "stem", where),
                texts,
                labels,
                key,
                labels.index(key),
            )
        )
    return questions


def _read_mmlu(folder: Path, split: str, prefix: str) -> list[Question]:
    suffix = f"_{split}.csv"
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"benchmark files not found: {folder / ('*' + suffix)}")
    questions = []
    for path in files:
        subject = path.name[: -len(suffix)]
        # newline="" lets csv handle quoted multi-line fields and the files' CRLF line endings
        with io.StringIO(_decode(path.read_bytes(), path), newline="") as f:
            reader = csv.reader(f)
            start_line = 1
            for row_index, row in enumerate(reader):
                where = f"{path}, row {row_index + 1} (line {start_line})"
                start_line = reader.line_num + 1
                if len(row) != 6:
                    raise BenchmarkFormatError(
                        f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}"
                    )
                answer = row[5].strip()
                if answer not in _MMLU_LABELS:
                    raise BenchmarkFormatError(f"{where}: answer {row[5]!r} is not one of A, B, C, D")
                # a few quoted multi-line fields keep the file's CRLF; text should not depend on that
                row = [field.replace("\r\n", "\n") for field in row]
                questions.append(
                    Question(
                        "mmlu",
                        f"{prefix}/{subject}/{row_index}",
                        subject,
                        row[0],
                        tuple(row[1:5]),
                        _MMLU_LABELS,
                        answer,
                        _MMLU_LABELS.index(answer),
                    )
                )
    return questions


def _read_hellaswag(path: Path, prefix: str) -> list[Question]:
    try:
        with bz2.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise BenchmarkFormatError(f"{path}: cannot read the bzip2 text ({e})") from e
    lines = _decode(data, path).split("\n")
    if lines and lines[-1] == "":  # the file ends with a newline
        lines.pop()
    n = _HELLASWAG_LINES_PER_ITEM
    if len(lines) % n:
        item = len(lines) // n
        raise BenchmarkFormatError(
            f"{path}, line {item * n + 1}: item {item} is truncated "
            f"({len(lines) % n} of {n} lines: context, label, 4 endings)"
        )
    labels = ("A", "B", "C", "D")
    questions = []
    for item in range(len(lines) // n):
        context, gold, *endings = lines[item * n : (item + 1) * n]
        if gold not in ("0", "1", "2", "3"):
            raise BenchmarkFormatError(f"{path}, line {item * n + 2}: item {item} has label {gold!r}, not 0-3")
        index = int(gold)
        questions.append(
            Question("hellaswag", f"{prefix}/{item}", "", context, tuple(endings), labels, labels[index], index)
        )
    return questions


def _read_bbh(folder: Path, prefix: str) -> list[Question]:
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"benchmark files not found: {folder / '*.json'}")
    questions = []
    for path in files:
        task = path.stem
        text = _decode(path.read_bytes(), path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkFormatError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from e
        except RecursionError:
            raise BenchmarkFormatError(f"{path}: invalid JSON (nested too deeply to read)") from None
        examples = data.get("examples") if isinstance(data, dict) else None
        if not isinstance(examples, list):
            raise BenchmarkFormatError(f'{path}: expected an object with an "examples" list')
        for index, example in enumerate(examples):
            where = f"{path}, examples[{index}]"
            if not isinstance(example, dict):
                raise BenchmarkFormatError(f"{where}: expected an object with input and target")
            questions.append(
                Question(
                    "bbh",
                    f"{prefix}/{task}/{index}",
                    task,
                    _str_field(example, "input", where),
                    (),
                    (),
                    _str_field(example, "target", where),
                    None,
                )
            )
    return questions


# --------------------------------------------------------------------------------------------- sampling


def question_row(q: Question, protocol: str, sampled: bool) -> dict:
    """A question as a row of the eval/questions table."""
    return {**dataclasses.asdict(q), "choices": list(q.choices), "labels": list(q.labels), "protocol": protocol, "sampled": sampled}


def question_from_row(row: Mapping) -> Question:
    """The question an eval/questions row holds."""
    return Question(**{f.name: row[f.name] for f in dataclasses.fields(Question)} | {"choices": tuple(row["choices"]), "labels": tuple(row["labels"])})


def sample_questions(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    """A deterministic sample of at most `limit` questions (None or <= 0: all), in input order.

    Stratified by (benchmark, subset): the subsets are visited round-robin in a seeded order, each
    yielding its questions in a seeded order, so even a small limit spreads over MMLU subjects and BBH
    tasks. A larger limit with the same seed keeps every question of a smaller one.
    """
    if limit is None or limit <= 0 or limit >= len(questions):
        return list(questions)
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[int]] = {}
    for position, q in enumerate(questions):
        groups.setdefault((q.benchmark, q.subset), []).append(position)
    order = list(groups.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    round_robin = [p for one_round in zip_longest(*order) for p in one_round if p is not None]
    return [questions[i] for i in sorted(round_robin[:limit])]


# Each benchmark of srlm/registry.py: (the kit's eval/ folder, split, question id prefix) -> its questions.
READERS = {
    "gsm8k": lambda eval_dir, split, prefix: _read_gsm8k(_existing(eval_dir / "gsm8k" / f"{split}.jsonl"), prefix),
    "arc_challenge": lambda eval_dir, split, prefix: _read_arc(_existing(eval_dir / "arc_challenge" / f"{split}.jsonl"), prefix),
    "mmlu": lambda eval_dir, split, prefix: _read_mmlu(eval_dir / "mmlu" / split, split, prefix),
    "hellaswag": lambda eval_dir, split, prefix: _read_hellaswag(_existing(eval_dir / "hellaswag" / "hellaswag_val_full.txt.bz2"), prefix),
    "bbh": lambda eval_dir, split, prefix: _read_bbh(eval_dir / "bbh", prefix),
}


# --------------------------------------------------------------------------------- generate protocol

# The instruction closing every `generate` prompt, with the answer form. Short on purpose: tiny models read it.
INSTRUCTION = "Think step by step inside <think></think>, then write only the final answer{form}."
ANSWER_FORMS = {
    "number": ": a number",  # gsm8k
    "letter": ": the letter of the correct option",  # multiple choice with letter labels
    "option_number": ": the number of the correct option",  # ARC items labelled 1-4
    "free": "",  # bbh: the task input shows its options or answer form
}
HELLASWAG_LEAD = "Which ending completes the text best?"


def generation_messages(q: Question) -> list[dict[str, str]]:
    """The zero-shot chat prompt of the `generate` protocol: one user message.

    It holds the question (HellaSwag: `HELLASWAG_LEAD`, then the context), the options as "A. text"
    lines when there are some, and `INSTRUCTION` with the benchmark's answer form (`ANSWER_FORMS`).
    """
    parts = [f"{HELLASWAG_LEAD}\n\n{q.question}" if q.benchmark == "hellaswag" else q.question]
    if q.choices:
        parts.append("\n".join(f"{label}. {text}" for label, text in zip(q.labels, q.choices)))
        form = "option_number" if all(label.isdigit() for label in q.labels) else "letter"
    else:
        form = "number" if BENCHMARKS[q.benchmark].numeric_answer else "free"
    parts.append(INSTRUCTION.format(form=ANSWER_FORMS[form]))
    return [{"role": "user", "content": "\n\n".join(parts)}]


# ---------------------------------------------------------------------------- loglikelihood protocol

# Formats checked against EleutherAI/lm-evaluation-harness (default target_delimiter " "):
# - lm_eval/tasks/arc/arc_easy.yaml (arc_challenge includes it): doc_to_text "Question: {{question}}\nAnswer:",
#   doc_to_choice "{{choices.text}}";
# - lm_eval/tasks/mmlu/default/_default_template_yaml: doc_to_text "{{question.strip()}}\nA. {{choices[0]}}\n
#   B. ...\nD. {{choices[3]}}\nAnswer:", doc_to_choice ["A", "B", "C", "D"]; each mmlu_<subject>.yaml sets
#   description "The following are multiple choice questions (with answers) about <subject words>.\n\n",
#   which the harness puts before the (zero-shot) context;
# - lm_eval/tasks/hellaswag/hellaswag.yaml + utils.py: doc_to_text "{{query}}" = preprocess(activity_label
#   + ": " + ctx), doc_to_choice "choices" = the preprocessed endings. The kit's text form is already
#   preprocessed that way (by llama.cpp's script, which differs in details; see the kit README).


def loglikelihood_requests(q: Question) -> list[tuple[str, str]]:
    """One (context, continuation) pair per choice, in choice order; the harness's default formats."""
    if q.benchmark == "arc_challenge":
        return [(f"Question: {q.question}\nAnswer:", f" {text}") for text in q.choices]
    if q.benchmark == "mmlu":
        subject = q.subset.replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        options = "".join(f"\n{label}. {text}" for label, text in zip(q.labels, q.choices))
        context = f"{description}{q.question.strip()}{options}\nAnswer:"
        return [(context, f" {label}") for label in q.labels]
    if q.benchmark == "hellaswag":
        return [(q.question, f" {ending}") for ending in q.choices]
    raise ValueError(f"{q.benchmark} has no choices to score; the loglikelihood protocol needs multiple choice")
