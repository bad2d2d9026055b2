"""Data assets: D0 (data/instructions) and the reasoning catalyst (data/catalyst), each with a table of
the rows it rejected and why. Each asset's metadata accounts for every row of its files: rows_in_files =
blank_lines + excluded (per reason) + not_sampled + read, and read = kept + rejected (per reason)."""


import dataclasses
import json
from typing import Sequence

import dagster as dg
import polars as pl

from assets import schemas
from assets.tables import code_version, frame, table_output
from resources import GenerationResource
from srlm import catalyst as cat, prompts
from srlm.config import ExperimentConfig
from srlm.datasets import Example, Rejected, check_intake, load_instructions, reject_too_long, source_name
from srlm.engines.types import SamplingParams

INSTRUCTIONS = dg.AssetKey(["data", "instructions"])
INSTRUCTIONS_REJECTED = dg.AssetKey(["data", "instructions_rejected"])
CATALYST = dg.AssetKey(["data", "catalyst"])
CATALYST_REJECTED = dg.AssetKey(["data", "catalyst_rejected"])
BASE_MODEL = dg.AssetKey(["model", "base"])

def answer_text(tokenizer, instruction: str, input_text: str, rationale: str, output: str) -> str:
    """The whole answering example as the model sees it (for token counts)."""
    return tokenizer.render_chat(prompts.answer_messages(instruction, input_text)) + prompts.answer_completion(rationale, output)


def enrich_text(tokenizer, record: cat.CatalystRecord) -> str:
    messages = prompts.enrich_messages(record.instruction, record.input, record.short_rationale, record.output)
    return tokenizer.render_chat(messages) + record.rationale


def rejected_frame(rejected: Sequence[Rejected]) -> pl.DataFrame:
    return frame((dataclasses.asdict(r) for r in rejected), schemas.REJECTED)


def count_metadata(counts: dict[str, int]) -> dict[str, int]:
    return {k.replace(": ", "/").replace(" ", "_"): v for k, v in counts.items()}


def build_data_assets(config: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.multi_asset(
        outs={
            "instructions": dg.AssetOut(
                key=INSTRUCTIONS,
                description="D0: the instruction data (instruction, input, response, rationale) every iteration starts from.",
                kinds={"polars", "parquet"},
            ),
            "instructions_rejected": dg.AssetOut(
                key=INSTRUCTIONS_REJECTED,
                description="Rows of the instruction sources that were not kept, each with its reason and the raw row.",
                kinds={"polars", "parquet"},
            ),
        },
        ins={"base": dg.AssetIn(BASE_MODEL)},
        group_name="data",
        code_version=code_version(config.section_hash("instructions"), prompts.ANSWER_FORMAT_VERSION),
    )
    def instructions(context: dg.AssetExecutionContext, generation: GenerationResource, base: pl.DataFrame):
        df, rejected, counts = instructions_tables(config, generation.tokenizer(base["path"][0]))
        context.log.info(f"instructions: {counts}")
        meta = {**count_metadata(counts), "mean_tokens": float(df["n_tokens"].mean() or 0.0)}
        yield table_output(df, meta, output_name="instructions")
        yield table_output(rejected, count_metadata(counts), output_name="instructions_rejected")

    @dg.multi_asset(
        outs={
            "catalyst": dg.AssetOut(
                key=CATALYST,
                description=(
                    "The reasoning catalyst C: (instruction, short rationale r0, response, enriched rationale r*) "
                    f"demonstrations of enriching reasoning; source: {config.catalyst.source}."
                ),
                kinds={"polars", "parquet"},
            ),
            "catalyst_rejected": dg.AssetOut(
                key=CATALYST_REJECTED,
                description="Catalyst rows that were not kept, each with its reason and the raw row.",
                kinds={"polars", "parquet"},
            ),
        },
        ins={"instructions": dg.AssetIn(INSTRUCTIONS), "base": dg.AssetIn(BASE_MODEL)},
        group_name="data",
        code_version=code_version(
            config.section_hash("catalyst"), prompts.ENRICH_VERSION, prompts.TEACHER_VERSION, prompts.RATIONALE_EXTRACTION_VERSION
        ),
    )
    def catalyst(
        context: dg.AssetExecutionContext, generation: GenerationResource, instructions: pl.DataFrame, base: pl.DataFrame
    ):
        df, rejected, counts = catalyst_tables(config, generation, instructions, generation.tokenizer(base["path"][0]))
        context.log.info(f"catalyst ({config.catalyst.source}): {counts}")
        growth = (df["rationale"].str.len_chars() / df["short_rationale"].str.len_chars().clip(lower_bound=1)).mean()
        meta = {**count_metadata(counts), "mean_tokens": float(df["n_tokens"].mean() or 0.0), "mean_length_ratio_r*_r0": float(growth or 0.0)}
        yield table_output(df, meta, output_name="catalyst")
        yield table_output(rejected, count_metadata(counts), output_name="catalyst_rejected")

    return [instructions, catalyst]


def instructions_tables(config: ExperimentConfig, tokenizer) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """What data/instructions writes: D0, its rejected rows (examples too long for `tokenizer`'s model among
    them), and the row counts. IntakeError when a source file keeps no row or rejects too many."""
    loaded = load_instructions(config.instructions.sources, config.instructions.seed)
    texts = [answer_text(tokenizer, e.instruction, e.input, e.rationale, e.output) for e in loaded.examples]
    rows, loaded.examples, too_long = _keep_what_fits(loaded.examples, texts, tokenizer, lambda e: e.example_id)
    loaded.rejected += too_long
    check_intake("instructions", {source_name(s): s.path for s in config.instructions.sources},
                 [e.source for e in loaded.examples], loaded.rejected, config.instructions.max_rejected_fraction)
    return frame(rows, schemas.INSTRUCTIONS), rejected_frame(loaded.rejected), loaded.counts()


def catalyst_tables(
    config: ExperimentConfig, generation: GenerationResource, instructions: pl.DataFrame, tokenizer
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """What data/catalyst writes: C from the configured source, its rejected rows (records too long for
    `tokenizer`'s model among them), and the row counts. IntakeError when C is empty or rejects too many."""
    result = _catalyst_records(config, generation, instructions)
    texts = [enrich_text(tokenizer, r) for r in result.records]
    rows, result.records, too_long = _keep_what_fits(result.records, texts, tokenizer, lambda r: r.catalyst_id)
    result.rejected += too_long
    check_intake("catalyst", cat.catalyst_files(config.catalyst), [r.source for r in result.records], result.rejected,
                 config.catalyst.max_rejected_fraction)
    return frame(rows, schemas.CATALYST), rejected_frame(result.rejected), result.counts()


def _keep_what_fits(items: list, texts: list[str], tokenizer, id_of) -> tuple[list[dict], list, list[Rejected]]:
    """Items whose training text fits the model, as table rows with their token count; the rest rejected."""
    lengths = tokenizer.count_tokens(texts)
    kept, too_long = reject_too_long(
        items, lengths, tokenizer.max_length, lambda x, reason: Rejected(x.source, x.source_row, reason, _as_json(x), id_of(x))
    )
    n_tokens = dict(zip(map(id_of, items), lengths))
    return [{**dataclasses.asdict(x), "n_tokens": n_tokens[id_of(x)]} for x in kept], kept, too_long


def _catalyst_records(config: ExperimentConfig, generation: GenerationResource, instructions: pl.DataFrame) -> cat.CatalystResult:
    """C from the catalyst file, or from pool rows not in D0 (derived, or enriched by the teacher)."""
    spec = config.catalyst
    if spec.source == "file":
        return cat.read_catalyst_file(spec.file, spec.size, spec.seed)
    in_d0 = set(zip(instructions["instruction"].to_list(), instructions["input"].to_list()))
    pool = load_instructions([spec.pool.model_copy(update={"sample": spec.size})], spec.seed, exclude=in_d0, exclude_reason="in D0")
    if spec.source == "derived":
        records, rejected = cat.derive(pool.examples)
    else:
        records, rejected = cat.teach(pool.examples, _teacher(generation, config))
    return cat.CatalystResult(records, pool.rejected + rejected, pool.intake)


def _teacher(generation: GenerationResource, config: ExperimentConfig):
    spec = config.catalyst.teacher
    engine = generation.teacher(spec.backend, spec.model, spec.base_url, spec.api_key_env)
    params = SamplingParams(n=1, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens, seed=config.catalyst.seed)

    def generate(examples: list[Example]) -> list[tuple[str, str]]:
        messages = [prompts.teacher_messages(e.instruction, e.input, e.rationale or e.output, e.output) for e in examples]
        outputs = engine.generate(messages, params)
        return [(o.completions[0].text, o.completions[0].finish_reason) for o in outputs]

    return generate


def _as_json(item: object) -> str:
    return json.dumps(dataclasses.asdict(item), ensure_ascii=False)
