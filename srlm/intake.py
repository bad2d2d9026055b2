"""What the data assets write: D0 and the reasoning catalyst C, each with the rows it rejected and why, and
the counts that account for every row of the source files (rows_in_files = blank_lines + excluded (per
reason) + not_sampled + read, and read = kept + rejected (per reason))."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Protocol, Sequence

import polars as pl

from srlm import catalyst as cat, prompts
from srlm.config import ExperimentConfig
from srlm.datasets import Example, Rejected, check_intake, load_instructions, reject_too_long, source_name
from srlm.engines.types import Engine, SamplingParams, Tokenizing
from srlm.schemas import CATALYST, INSTRUCTIONS, REJECTED, frame


class TeacherSource(Protocol):
    """Where a teacher catalyst's engine comes from (the generation resource)."""

    def teacher(self, backend: str, model: str, base_url: str | None = None, api_key_env: str | None = None) -> Engine: ...


def answer_text(tokenizer: Tokenizing, instruction: str, input_text: str, rationale: str, output: str) -> str:
    """The whole answering example as the model sees it (for token counts)."""
    return tokenizer.render_chat(prompts.answer_messages(instruction, input_text)) + prompts.answer_completion(rationale, output)


def enrich_text(tokenizer: Tokenizing, record: cat.CatalystRecord) -> str:
    messages = prompts.enrich_messages(record.instruction, record.input, record.short_rationale, record.output)
    return tokenizer.render_chat(messages) + record.rationale


def rejected_frame(rejected: Sequence[Rejected]) -> pl.DataFrame:
    return frame((dataclasses.asdict(r) for r in rejected), REJECTED)


def count_metadata(counts: dict[str, int]) -> dict[str, int]:
    """Intake counts as metadata keys ("rejected: too long" -> "rejected/too_long")."""
    return {k.replace(": ", "/").replace(" ", "_"): v for k, v in counts.items()}


def instructions_tables(cfg: ExperimentConfig, tokenizer: Tokenizing) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """What data/instructions writes: D0, its rejected rows (examples too long for `tokenizer`'s model among
    them), and the row counts. IntakeError when a source file keeps no row or rejects too many."""
    loaded = load_instructions(cfg.instructions.sources, cfg.instructions.seed)
    texts = [answer_text(tokenizer, e.instruction, e.input, e.rationale, e.output) for e in loaded.examples]
    rows, loaded.examples, too_long = _keep_what_fits(loaded.examples, texts, tokenizer, lambda e: e.example_id)
    loaded.rejected += too_long
    check_intake("instructions", {source_name(s): s.path for s in cfg.instructions.sources},
                 [e.source for e in loaded.examples], loaded.rejected, cfg.instructions.max_rejected_fraction)
    return frame(rows, INSTRUCTIONS), rejected_frame(loaded.rejected), loaded.counts()


def catalyst_tables(
    cfg: ExperimentConfig, generation: TeacherSource | None, instructions: pl.DataFrame, tokenizer: Tokenizing
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """What data/catalyst writes: C from the configured source, its rejected rows (records too long for
    `tokenizer`'s model among them), and the row counts. IntakeError when C is empty or rejects too many.
    `generation` gives the teacher's engine (only a teacher catalyst uses it)."""
    result = _catalyst_records(cfg, generation, instructions)
    texts = [enrich_text(tokenizer, r) for r in result.records]
    rows, result.records, too_long = _keep_what_fits(result.records, texts, tokenizer, lambda r: r.catalyst_id)
    result.rejected += too_long
    check_intake("catalyst", cat.catalyst_files(cfg.catalyst), [r.source for r in result.records], result.rejected,
                 cfg.catalyst.max_rejected_fraction)
    return frame(rows, CATALYST), rejected_frame(result.rejected), result.counts()


def catalyst_growth(catalyst: pl.DataFrame) -> float:
    """Mean length ratio of the enriched rationale r* to the short one r0, in characters."""
    growth = (catalyst["rationale"].str.len_chars() / catalyst["short_rationale"].str.len_chars().clip(lower_bound=1)).mean()
    return float(growth or 0.0)


def _keep_what_fits(items: list, texts: list[str], tokenizer: Tokenizing, id_of) -> tuple[list[dict], list, list[Rejected]]:
    """Items whose training text fits the model, as table rows with their token count; the rest rejected."""
    lengths = tokenizer.count_tokens(texts)
    kept, too_long = reject_too_long(
        items, lengths, tokenizer.max_length, lambda x, reason: Rejected(x.source, x.source_row, reason, _as_json(x), id_of(x))
    )
    n_tokens = dict(zip(map(id_of, items), lengths))
    return [{**dataclasses.asdict(x), "n_tokens": n_tokens[id_of(x)]} for x in kept], kept, too_long


def _catalyst_records(cfg: ExperimentConfig, generation: TeacherSource | None, instructions: pl.DataFrame) -> cat.CatalystResult:
    """C from the catalyst file, or from pool rows not in D0 (derived, or enriched by the teacher)."""
    spec = cfg.catalyst
    if spec.source == "file":
        return cat.read_catalyst_file(spec.file, spec.size, spec.seed)
    in_d0 = set(zip(instructions["instruction"].to_list(), instructions["input"].to_list()))
    pool = load_instructions([spec.pool.model_copy(update={"sample": spec.size})], spec.seed, exclude=in_d0, exclude_reason="in D0")
    if spec.source == "derived":
        records, rejected = cat.derive(pool.examples)
    else:
        records, rejected = cat.teach(pool.examples, _teacher(generation, cfg))
    return cat.CatalystResult(records, pool.rejected + rejected, pool.intake)


def _teacher(generation: TeacherSource, cfg: ExperimentConfig) -> Callable[[list[Example]], list[tuple[str, str]]]:
    spec = cfg.catalyst.teacher
    engine = generation.teacher(spec.backend, spec.model, spec.base_url, spec.api_key_env)
    params = SamplingParams(n=1, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens, seed=cfg.catalyst.seed)

    def generate(examples: list[Example]) -> list[tuple[str, str]]:
        messages = [prompts.teacher_messages(e.instruction, e.input, e.rationale or e.output, e.output) for e in examples]
        outputs = engine.generate(messages, params)
        return [(o.completions[0].text, o.completions[0].finish_reason) for o in outputs]

    return generate


def _as_json(item: object) -> str:
    return json.dumps(dataclasses.asdict(item), ensure_ascii=False)
