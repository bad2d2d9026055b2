"""Expansion: M_{t-1} rewrites each example's current rationale into N candidates, in shards.

The prompt is the enriching task (x, r, y) -> r' for the SRLM arms, or the answering task x -> <think>r</think> y
for self-training (the rationale is read out of the think block).

Examples are ordered by example_id and cut into shards of `shard_size`; every shard is sampled with its
own seed (derived from the run seed, the iteration and the shard index) and committed as its own
Parquet file the moment it is complete. A run killed half way resumes from the finished shards, and
because a shard's output depends only on its own inputs and seed, the resumed table equals the table of
an uninterrupted run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import polars as pl
import pyarrow as pa

from srlm import prompts
from srlm.datasets import stable_id
from srlm.engines.types import Engine, SamplingParams
from srlm.registry import ANSWER, ENRICH, SRLM
from srlm.storage import Storage

CANDIDATE_SCHEMA = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("arm", pa.string()),
        ("example_id", pa.string()),
        ("iteration", pa.int64()),
        ("parent_id", pa.string()),
        ("checkpoint_id", pa.string()),
        ("sample_index", pa.int64()),
        ("seed", pa.int64()),
        ("temperature", pa.float64()),
        ("top_p", pa.float64()),
        ("prompt_template", pa.string()),
        ("text", pa.string()),
        ("skills", pa.string()),  # meta-reasoning skills marked in the text ("[decomposition] ..."), in order of first use
        ("n_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        ("run_id", pa.string()),
        ("shard", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ExpansionTask:
    """One example to enrich: its current rationale (parent) and the reference response."""

    example_id: str
    parent_id: str
    instruction: str
    input: str
    rationale: str
    output: str


# each prompt's messages, and the name of its template's version in srlm/prompts.py (read when needed, so
# the version is always the template's current one)
PROMPTS = {
    ENRICH: (lambda t: prompts.enrich_messages(t.instruction, t.input, t.rationale, t.output), "ENRICH_VERSION"),
    ANSWER: (lambda t: prompts.answer_messages(t.instruction, t.input), "ANSWER_FORMAT_VERSION"),
}


def prompt_version(prompt: str) -> str:
    """The version of a PROMPTS entry's template."""
    return getattr(prompts, PROMPTS[prompt][1])


@dataclass(frozen=True)
class ExpansionSettings:
    iteration: int
    checkpoint_id: str
    params: SamplingParams  # its seed is the run seed; each shard derives its own from it
    shard_size: int
    arm: str = SRLM
    prompt: str = ENRICH  # a key of PROMPTS

    @property
    def template_version(self) -> str:
        return prompt_version(self.prompt)


def shard_seed(seed: int, iteration: int, shard: int) -> int:
    digest = hashlib.sha256(f"{seed}/{iteration}/{shard}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def shard_tasks(tasks: Sequence[ExpansionTask], shard_size: int) -> list[list[ExpansionTask]]:
    ordered = sorted(tasks, key=lambda t: t.example_id)
    return [ordered[i : i + shard_size] for i in range(0, len(ordered), shard_size)]


def recipe_key(tasks: Sequence[ExpansionTask], settings: ExpansionSettings, adapter: str | None) -> str:
    """Everything that determines the shards' content; finished shards are reused only under the same key."""
    parts = [
        settings.arm,
        settings.template_version,
        prompts.ANSWER_FORMAT_VERSION,
        prompts.RATIONALE_EXTRACTION_VERSION,
        settings.checkpoint_id,
        str(adapter),
        repr(settings.params),
        str(settings.shard_size),
        str(settings.iteration),
        *(f"{t.example_id}:{t.parent_id}" for t in sorted(tasks, key=lambda t: t.example_id)),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _shard_rows(
    shard: int, tasks: Sequence[ExpansionTask], engine: Engine, settings: ExpansionSettings, adapter: str | None, run_id: str
) -> pa.Table:
    seed = shard_seed(settings.params.seed, settings.iteration, shard)
    params = SamplingParams(**{**settings.params.__dict__, "seed": seed})
    render = PROMPTS[settings.prompt][0]
    messages = [render(t) for t in tasks]
    outputs = engine.generate(messages, params, adapter=adapter)
    rows = []
    for task, output in zip(tasks, outputs, strict=True):
        for index, completion in enumerate(output.completions):
            text = prompts.strip_think(completion.text)
            cid = stable_id(str(settings.iteration), task.example_id, task.parent_id, settings.checkpoint_id, str(seed), str(index), text)
            rows.append(
                {
                    "candidate_id": cid,
                    "arm": settings.arm,
                    "example_id": task.example_id,
                    "iteration": settings.iteration,
                    "parent_id": task.parent_id,
                    "checkpoint_id": settings.checkpoint_id,
                    "sample_index": index,
                    "seed": seed,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "prompt_template": settings.template_version,
                    "text": text,
                    "skills": prompts.skills_used(text),
                    "n_tokens": completion.n_tokens,
                    "finish_reason": completion.finish_reason,
                    "run_id": run_id,
                    "shard": shard,
                }
            )
    return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)


def expand(
    tasks: Sequence[ExpansionTask],
    engine: Engine,
    settings: ExpansionSettings,
    shard_dir: str | Path,
    run_id: str,
    adapter: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    storage: Storage | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Generate every unfinished shard, commit each when done, and return all candidates plus counts
    {"shards", "reused", "generated"}. shard_dir should be specific to the recipe (see recipe_key); it is a
    local folder, or a URI on `storage` (srlm/storage.py: every shard is written atomically there too)."""
    storage = storage or Storage(str(shard_dir))
    shards = shard_tasks(tasks, settings.shard_size)
    tables, reused = [], 0
    for index, shard in enumerate(shards):
        path = f"{str(shard_dir).rstrip('/')}/shard-{index:05d}.parquet"
        if storage.is_file(path):
            tables.append(storage.read_parquet(path))
            reused += 1
            continue
        table = _shard_rows(index, shard, engine, settings, adapter, run_id)
        storage.write_parquet(table, path)
        tables.append(table)
        log(f"shard {index + 1}/{len(shards)}: {len(shard)} examples, {table.num_rows} candidates")
    all_rows = pa.concat_tables(tables) if tables else CANDIDATE_SCHEMA.empty_table()
    return all_rows, {"shards": len(shards), "reused": reused, "generated": len(shards) - reused}


def candidates_metadata(candidates: pl.DataFrame, examples: int, counts: dict[str, int]) -> dict:
    """What a candidates asset reports: its size, length, cut-off candidates and reused shards."""
    return {
        "examples": examples,
        "candidates": candidates.height,
        "mean_tokens": float(candidates["n_tokens"].mean() or 0.0),
        "cut_off_at_token_limit": int((candidates["finish_reason"] == "length").sum()),
        "shards_reused": counts["reused"],
        "shards_generated": counts["generated"],
    }
