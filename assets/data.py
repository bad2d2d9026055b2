"""Data assets: D0 (data/instructions) and the reasoning catalyst (data/catalyst), each with a table of
the rows it rejected and why (srlm/intake.py builds them and accounts for every row of their files)."""


import dagster as dg
import polars as pl

from assets.tables import asset_key, code_version, table_output
from resources import GenerationResource
from srlm import prompts, registry
from srlm.config import ExperimentConfig
from srlm.intake import catalyst_growth, catalyst_tables, count_metadata, instructions_tables

INSTRUCTIONS = asset_key(registry.INSTRUCTIONS)
INSTRUCTIONS_REJECTED = asset_key(registry.INSTRUCTIONS_REJECTED)
CATALYST = asset_key(registry.CATALYST)
CATALYST_REJECTED = asset_key(registry.CATALYST_REJECTED)
BASE_MODEL = asset_key(registry.BASE_MODEL)


def _tables(table: dg.AssetKey, table_description: str, rejected: dg.AssetKey, rejected_description: str) -> dict[str, dg.AssetOut]:
    """The outs of a data asset: its table and the rows it rejected."""
    return {
        table.path[-1]: dg.AssetOut(key=table, description=table_description, kinds={"polars", "parquet"}),
        rejected.path[-1]: dg.AssetOut(key=rejected, description=rejected_description, kinds={"polars", "parquet"}),
    }


def build_data_assets(cfg: ExperimentConfig) -> list[dg.AssetsDefinition]:
    @dg.multi_asset(
        outs=_tables(
            INSTRUCTIONS, "D0: the instruction data (instruction, input, response, rationale) every iteration starts from.",
            INSTRUCTIONS_REJECTED, "Rows of the instruction sources that were not kept, each with its reason and the raw row.",
        ),
        ins={"base": dg.AssetIn(BASE_MODEL)},
        group_name="data",
        code_version=code_version(cfg.section_hash("instructions"), prompts.ANSWER_FORMAT_VERSION),
    )
    def instructions(context: dg.AssetExecutionContext, generation: GenerationResource, base: pl.DataFrame):
        df, rejected, counts = instructions_tables(cfg, generation.tokenizer(base["path"][0]))
        context.log.info(f"instructions: {counts}")
        meta = {**count_metadata(counts), "mean_tokens": float(df["n_tokens"].mean() or 0.0)}
        yield table_output(df, meta, output_name="instructions")
        yield table_output(rejected, count_metadata(counts), output_name="instructions_rejected")

    @dg.multi_asset(
        outs=_tables(
            CATALYST,
            "The reasoning catalyst C: (instruction, short rationale r0, response, enriched rationale r*) "
            f"demonstrations of enriching reasoning; source: {cfg.catalyst.source}.",
            CATALYST_REJECTED, "Catalyst rows that were not kept, each with its reason and the raw row.",
        ),
        ins={"instructions": dg.AssetIn(INSTRUCTIONS), "base": dg.AssetIn(BASE_MODEL)},
        group_name="data",
        code_version=code_version(
            cfg.section_hash("catalyst"), prompts.ENRICH_VERSION, prompts.TEACHER_VERSION, prompts.RATIONALE_EXTRACTION_VERSION
        ),
    )
    def catalyst(context: dg.AssetExecutionContext, generation: GenerationResource, instructions: pl.DataFrame, base: pl.DataFrame):
        df, rejected, counts = catalyst_tables(cfg, generation, instructions, generation.tokenizer(base["path"][0]))
        context.log.info(f"catalyst ({cfg.catalyst.source}): {counts}")
        meta = {**count_metadata(counts), "mean_tokens": float(df["n_tokens"].mean() or 0.0), "mean_length_ratio_r*_r0": catalyst_growth(df)}
        yield table_output(df, meta, output_name="catalyst")
        yield table_output(rejected, count_metadata(counts), output_name="catalyst_rejected")

    return [instructions, catalyst]
