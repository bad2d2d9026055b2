"""Prompt templates of the two tasks one model learns, and the teacher's meta-reasoning prompt.

Answering:  x                -> "<think>{r}</think>\\n{y}"
Enriching:  (x, r, y)        -> r'   (a longer, more explicit rationale consistent with y)

Every template is plain text here with its own version (a hash of what it renders): the answer format
(think tags), the enriching prompt, the teacher's prompt, and the rationale extraction of generated text.
Each asset puts the versions of what it renders into its code version, so editing one template marks
only the assets built from it stale in Dagster. Prompts are chat messages; each engine renders them with
its model's own chat template.
"""

from __future__ import annotations

import hashlib
import inspect
import re

SKILLS = (
    "reflection",
    "decomposition",
    "detail",
    "summary",
    "alternative-thinking",
    "backward-thinking",
    "analogy",
    "checking",
)

_SKILL_MARK = re.compile(r"\[(" + "|".join(re.escape(s) for s in SKILLS) + r")\]", re.IGNORECASE)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
NO_RATIONALE = "(none)"

ENRICH_TEMPLATE = """\
Enrich the reasoning. Rewrite the rationale as longer, explicit steps, each marked with a skill \
({skills}). Stay consistent with the response.
### Instruction
{instruction}
### Rationale
{rationale}
### Response
{response}"""

TEACHER_TEMPLATE = """\
You write enriched reasoning for a training set. Below are an instruction, a short rationale and the \
correct response. Write a longer rationale that leads to exactly this response, as a sequence of steps. \
Use the meta-reasoning skills that fit, among: {skills}. Start every step on its own line with its \
skill in brackets, for example "[decomposition] Split the task into ...". Do not change the response; \
do not write it after the steps. Output only the steps.
### Instruction
{instruction}
### Short rationale
{rationale}
### Response
{response}"""


def _version(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


# What each template renders, including the skill list and the placeholder of a missing rationale.
ANSWER_FORMAT_VERSION = _version(THINK_OPEN, THINK_CLOSE)
ENRICH_VERSION = _version(ENRICH_TEMPLATE, *SKILLS, NO_RATIONALE)
TEACHER_VERSION = _version(TEACHER_TEMPLATE, *SKILLS, NO_RATIONALE)


def user_text(instruction: str, input_text: str | None = None) -> str:
    """The instruction as the user sends it: the instruction, then its input (if any) after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def answer_messages(instruction: str, input_text: str | None = None) -> list[dict[str, str]]:
    return [{"role": "user", "content": user_text(instruction, input_text)}]


def answer_completion(rationale: str | None, response: str) -> str:
    return f"{think_block(rationale)}\n{response}"


def think_block(rationale: str | None) -> str:
    """The reasoning part of an answer; an empty rationale gives an empty block."""
    return f"{THINK_OPEN}{rationale or ''}{THINK_CLOSE}"


def _enrichment_messages(template: str, instruction: str, input_text: str | None, rationale: str | None, response: str) -> list[dict[str, str]]:
    content = template.format(
        skills=", ".join(SKILLS),
        instruction=user_text(instruction, input_text),
        rationale=rationale or NO_RATIONALE,
        response=response,
    )
    return [{"role": "user", "content": content}]


def enrich_messages(instruction: str, input_text: str | None, rationale: str | None, response: str) -> list[dict[str, str]]:
    """The enriching task the model learns (catalyst) and performs (expansion)."""
    return _enrichment_messages(ENRICH_TEMPLATE, instruction, input_text, rationale, response)


def teacher_messages(instruction: str, input_text: str | None, rationale: str | None, response: str) -> list[dict[str, str]]:
    """The meta-reasoning prompt sent to a teacher model that builds the catalyst."""
    return _enrichment_messages(TEACHER_TEMPLATE, instruction, input_text, rationale, response)


def strip_think(text: str) -> str:
    """A generated rationale sometimes carries think tags of the answering format; keep the text between
    them. Leading tags are dropped (weak models repeat the opening tag, or open with an empty think block
    before the text), and the text ends at the next closing tag."""
    text = text.strip()
    while text.startswith((THINK_OPEN, THINK_CLOSE)):
        text = text[len(THINK_OPEN) if text.startswith(THINK_OPEN) else len(THINK_CLOSE):].lstrip()
    if THINK_CLOSE in text:
        text = text.split(THINK_CLOSE, 1)[0]
    return text.strip()


# strip_think decides what text a candidate (or a teacher's rationale) keeps: its source is part of the
# recipe of that text, with ANSWER_FORMAT_VERSION (the tags it looks for).
RATIONALE_EXTRACTION_VERSION = _version(inspect.getsource(strip_think))


def skills_used(rationale: str) -> str:
    """The skills a rationale marks ("[checking] ..."), comma-separated, in order of first use."""
    seen: list[str] = []
    for match in _SKILL_MARK.finditer(rationale):
        skill = match.group(1).lower()
        if skill not in seen:
            seen.append(skill)
    return ",".join(seen)
