"""Generation, scoring and evaluation sampling as Ray Data jobs (config `executor.kind: ray`).

`RayEngine` speaks the engine interface the work is written against (`generate`, `logprobs`, `render_chat`,
`count_tokens`) and runs every `generate` or `logprobs` call as one Ray Data job:

    rows: one per (prompt, sample) or per (context, continuation), keyed by a stable content id
      -> the ids already written under the job's output folder are skipped (a rerun redoes only the rest)
      -> ray.data.from_items(rows)
         .map_batches(EngineActor, compute=ActorPoolStrategy(size=actors))   transformers (CPU or GPU)
         or ray.data.llm's vLLM processor (GPUs; srlm/ray_vllm.py)
      -> every result batch committed as one Parquet part under the output folder (srlm.storage: atomic,
         a local folder or an object store)
      -> the call's rows read back from the parts, in the shape the local engines return.

Seeds. A generation row carries its sample index, and the actor's `TransformersEngine.generate_rows` samples
it with the per-sequence seed `generate` uses (a hash of the call's seed, the prompt's tokens and the sample
index), so the Ray executor writes the texts the local one writes, whatever the rows' grouping. (ray.data.llm
keeps only the first completion of a request with n > 1, which is another reason for one row per sample.)

Where things run: this process (a Dagster step) tokenizes (chat rendering, token counts, row ids) and reads
the results back; the actors load the model, from `model_path`, which every Ray node must see at the same
path. An adapter given as a storage URI is fetched by each actor from the storage.

ray is imported here lazily, inside the functions that start jobs: importing this module needs no ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from srlm.datasets import stable_id
from srlm.engines.tokenization import TokenizingMixin, encode_prompts
from srlm.engines.types import Completion, GenerationOutput, LogProb, Prompt, SamplingParams
from srlm.storage import Storage

GENERATION_RESULT = pa.schema(
    [("row_id", pa.string()), ("text", pa.string()), ("n_tokens", pa.int64()), ("finish_reason", pa.string())]
)
SCORING_RESULT = pa.schema([("row_id", pa.string()), ("total", pa.float64()), ("n_tokens", pa.int64())])
RESULT_SCHEMAS = {"generate": GENERATION_RESULT, "logprobs": SCORING_RESULT}


@dataclass(frozen=True)
class RaySettings:
    """The `executor` section as the jobs need it (configs/default.yaml documents each key)."""

    address: str | None  # a running cluster ("auto", "ray://head:10001"); None: start Ray on this machine
    num_cpus: int | None  # the CPUs of a Ray started here; None: the machine's cores
    actors: int  # engines in a job's actor pool
    cpus_per_actor: int | None  # CPUs (torch threads) of a transformers actor; None: see actor_cpus


@dataclass
class JobRecord:
    """One Ray Data job: what it was asked, what it computed, where its rows lie."""

    kind: str  # "generate" | "logprobs"
    output: str
    rows: int  # distinct rows the call needed
    computed: int  # rows this job computed
    reused: int  # rows found already written
    job_id: str | None = None  # the Ray job (driver) the dataset ran in
    dataset: str | None = None  # Ray Data's id of the dataset
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ Ray session


def ray_session(settings: RaySettings):
    """The ray module, connected: to `settings.address`, or to a Ray started here (once per process). A Ray
    already initialized (by a test, or by the user) is used as it is."""
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")  # Ray Data's progress lines stay out of the step's log
    import ray

    if not ray.is_initialized():
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        if settings.address:
            ray.init(address=settings.address, **quiet)
        else:
            ray.init(num_cpus=settings.num_cpus or os.cpu_count(), **quiet)
    return ray


def actor_cpus(ray, settings: RaySettings) -> int:
    """The CPUs each transformers actor reserves: as configured; else a Ray started here shares its CPUs
    evenly among the actors, and on a cluster each actor takes 1. A local Ray too small for the pool is an
    error here rather than a job that waits forever for CPUs."""
    if settings.address:
        return settings.cpus_per_actor or 1
    cpus = int(ray.cluster_resources().get("CPU", 1))
    each = settings.cpus_per_actor or max(1, cpus // settings.actors)
    if each * settings.actors > cpus:
        raise ValueError(
            f"executor: {settings.actors} actors x {each} CPUs do not fit the {cpus} CPUs of the local Ray "
            "(executor.num_cpus); lower executor.actors or executor.cpus_per_actor"
        )
    return each


# ---------------------------------------------------------------------------------------------- rows


def _recipe(*parts: Any) -> str:
    """What a row's result depends on besides its own content: the model, the adapter, the backend, params."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sampling_recipe(params: SamplingParams) -> dict:
    """The params a sample depends on (n only says how many samples a prompt gets)."""
    return {k: v for k, v in dataclasses.asdict(params).items() if k != "n"}


def sample_count(params: SamplingParams) -> int:
    """Distinct samples per prompt: greedy decoding has one (the engines repeat it n times)."""
    return 1 if params.temperature == 0 else params.n


def generation_rows(prompts: Sequence[Prompt], params: SamplingParams, recipe: str) -> list[dict]:
    """One row per (prompt, sample), prompts in order then samples: row_id, prompt (JSON), sample_index."""
    rows = []
    for prompt in prompts:
        text = json.dumps(prompt, sort_keys=True)
        for index in range(sample_count(params)):
            rows.append({"row_id": stable_id("generate", recipe, text, str(index)), "prompt": text, "sample_index": index})
    return rows


def scoring_rows(requests: Sequence[tuple[str, str]], recipe: str) -> list[dict]:
    """One row per (context, continuation): row_id, context, continuation."""
    return [
        {"row_id": stable_id("logprobs", recipe, context, continuation), "context": context, "continuation": continuation}
        for context, continuation in requests
    ]


def distinct(rows: Sequence[dict]) -> list[dict]:
    """Rows with equal ids (the same prompt twice in a call) are computed once."""
    return list({row["row_id"]: row for row in rows}.values())


def decode_prompt(text: str) -> Prompt:
    return json.loads(text)


# ---------------------------------------------------------------------------------------------- parts


def part_path(output: str, kind: str, row_ids: Sequence[str]) -> str:
    """A part is named by its kind and rows: a retried batch rewrites the same part instead of adding one."""
    digest = hashlib.sha256("\x1f".join(sorted(row_ids)).encode()).hexdigest()[:16]
    return f"{output.rstrip('/')}/{kind}-{digest}.parquet"


def commit_part(batch: pa.Table, storage: dict, output: str, kind: str) -> pa.Table:
    """Write one batch of results as a Parquet part (atomically: a part is whole or absent); returns its ids."""
    if batch.num_rows:
        Storage(**storage).write_parquet(batch, part_path(output, kind, batch["row_id"].to_pylist()))
    return batch.select(["row_id"])


def read_results(storage: Storage, output: str, kind: str, row_ids: set[str]) -> dict[str, dict]:
    """The result row of each wanted id, from every part of that kind under `output`."""
    found: dict[str, dict] = {}
    for path in storage.glob(output, f"{kind}-*.parquet"):
        for row in storage.read_parquet(path).cast(RESULT_SCHEMAS[kind]).to_pylist():
            if row["row_id"] in row_ids:
                found[row["row_id"]] = row
    return found


# ---------------------------------------------------------------------------------------------- actors


def local_adapter(adapter: str | None, storage: dict) -> str | None:
    """The adapter as a local folder on this node: a storage URI is fetched once into the node's temp folder."""
    if adapter is None:
        return None
    from srlm.checkpoints import local_checkpoint

    return local_checkpoint(adapter, Storage(**storage), Path(tempfile.gettempdir()) / "srlm-ray")


class EngineActor:
    """An actor of the pool: one TransformersEngine, loaded once per job, that computes batches of rows."""

    def __init__(self, model_path: str, settings, kind: str, params: SamplingParams | None, adapter: str | None,
                 storage: dict, threads: int):
        import torch

        from srlm.engines.transformers_engine import TransformersEngine

        torch.set_num_threads(max(1, threads))
        self.engine = TransformersEngine(model_path, settings)
        self.kind, self.params = kind, params
        self.adapter = local_adapter(adapter, storage)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        if self.kind == "generate":
            work = [(decode_prompt(r["prompt"]), r["sample_index"]) for r in rows]
            done = self.engine.generate_rows(work, self.params, adapter=self.adapter)
            results = [{"row_id": r["row_id"], **dataclasses.asdict(c)} for r, c in zip(rows, done)]
        else:
            scored = self.engine.logprobs([(r["context"], r["continuation"]) for r in rows], adapter=self.adapter)
            results = [{"row_id": r["row_id"], "total": s.total, "n_tokens": s.n_tokens} for r, s in zip(rows, scored)]
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMAS[self.kind])


# ------------------------------------------------------------------------------------------ the engine


class RayEngine(TokenizingMixin):
    """The engine interface (srlm.engines.types.Engine), each call a Ray Data job whose rows land under `output`
    on `storage`.

    `backend` is "transformers" (`engine_settings`: a TransformersEngineSettings) or "vllm" (a VLLMEngineSettings,
    run through ray.data.llm). `jobs` records every job of this engine, for the step's metadata."""

    def __init__(self, model_path: str, backend: str, engine_settings, settings: RaySettings, storage: Storage, output: str,
                 batch_size: int):
        self.model_path, self.backend, self.engine_settings = str(model_path), backend, engine_settings
        self.batch_size = batch_size  # rows per actor call (each call's results are one part)
        self.settings, self.storage, self.output = settings, storage, str(output).rstrip("/")
        from srlm.engines.runtime import tokenizer_and_context  # lazily, as before: transformers and torch

        # the driver only tokenizes: the model's tokenizer and context length, no weights
        self.tokenizer, self.max_length = tokenizer_and_context(self.model_path, engine_settings.trust_remote_code)
        self.jobs: list[JobRecord] = []

    def _recipe(self, adapter: str | None, *more: Any) -> str:
        return _recipe(self.backend, self.model_path, adapter, *more)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None) -> list[GenerationOutput]:
        """n completions per prompt, in input order: the samples the local engine draws (see the module doc)."""
        encode_prompts(self.tokenizer, prompts, self.max_length)  # the local engines' check, before any job starts
        rows = generation_rows(prompts, params, self._recipe(adapter, sampling_recipe(params)))
        found = self._run("generate", rows, params, adapter)
        samples = sample_count(params)
        outputs = []
        for i in range(len(prompts)):
            mine = rows[i * samples : (i + 1) * samples]
            completions = [Completion(found[r["row_id"]]["text"], found[r["row_id"]]["n_tokens"], found[r["row_id"]]["finish_reason"]) for r in mine]
            outputs.append(GenerationOutput(prompt_index=i, completions=completions * params.n if samples == 1 else completions))
        return outputs

    def logprobs(self, requests: Sequence[tuple[str, str]], adapter: str | None = None) -> list[LogProb]:
        rows = scoring_rows(requests, self._recipe(adapter))
        found = self._run("logprobs", rows, None, adapter)
        return [LogProb(total=found[r["row_id"]]["total"], n_tokens=found[r["row_id"]]["n_tokens"]) for r in rows]

    def _run(self, kind: str, rows: list[dict], params: SamplingParams | None, adapter: str | None) -> dict[str, dict]:
        """Compute the rows not yet written under the output folder in one job; return every row's result."""
        started = time.perf_counter()
        wanted = distinct(rows)
        found = read_results(self.storage, self.output, kind, {row["row_id"] for row in wanted})
        todo = [row for row in wanted if row["row_id"] not in found]
        record = JobRecord(kind, self.output, len(wanted), len(todo), len(wanted) - len(todo))
        if todo:
            self._execute(kind, todo, params, adapter, record)
            found |= read_results(self.storage, self.output, kind, {row["row_id"] for row in todo})
        missing = len(wanted) - len(found)
        if missing:
            raise RuntimeError(f"Ray job {record.dataset}: {missing} of {len(wanted)} {kind} rows missing under {self.output}")
        record.seconds = time.perf_counter() - started
        self.jobs.append(record)
        return found

    def _execute(self, kind: str, todo: list[dict], params: SamplingParams | None, adapter: str | None, record: JobRecord) -> None:
        ray = ray_session(self.settings)
        # every actor gets work: a call takes at most batch_size rows, fewer when the rows are few
        per_call = max(1, min(self.batch_size, -(-len(todo) // self.settings.actors)))
        ds = self._engine_step(ray, kind, todo, params, adapter, per_call)
        # writing takes no CPU slot: the actors hold theirs until their last batch
        ds = ds.map_batches(commit_part, fn_kwargs={"storage": self.storage.record(), "output": self.output, "kind": kind},
                            batch_format="pyarrow", num_cpus=0)
        ds.set_name(f"srlm-{kind}")
        written = {row["row_id"] for row in ds.take_all()}
        record.job_id = ray.get_runtime_context().get_job_id()
        record.dataset = ds.get_dataset_id()
        if written != {row["row_id"] for row in todo}:
            raise RuntimeError(f"Ray job {record.dataset} wrote {len(written)} of {len(todo)} {kind} rows")

    def _engine_step(self, ray, kind: str, todo: list[dict], params: SamplingParams | None, adapter: str | None, per_call: int):
        """The dataset of the rows' results: an actor pool of TransformersEngines, or ray.data.llm's vLLM."""
        if self.backend == "vllm":
            from srlm import ray_vllm

            return ray_vllm.engine_step(ray, self, kind, todo, params, adapter, per_call)
        cpus = actor_cpus(ray, self.settings)
        return ray.data.from_items(todo, override_num_blocks=-(-len(todo) // per_call)).map_batches(
            EngineActor,
            fn_constructor_kwargs=dict(
                model_path=self.model_path, settings=self.engine_settings, kind=kind, params=params, adapter=adapter,
                storage=self.storage.record(), threads=cpus,
            ),
            compute=ray.data.ActorPoolStrategy(size=self.settings.actors),
            batch_size=per_call,
            batch_format="pyarrow",
            num_cpus=cpus,
        )


def job_metadata(engine: Any) -> dict[str, Any]:
    """What the step records of its Ray jobs (nothing for a local engine): the Ray job, the datasets, the
    output folder, and how many rows were computed or found already written."""
    jobs: list[JobRecord] = getattr(engine, "jobs", None) or []
    if not isinstance(engine, RayEngine) or not jobs:
        return {}
    ran = [j for j in jobs if j.dataset]
    return {
        "executor": "ray",
        "ray/address": engine.settings.address or "local",
        "ray/job_id": next((j.job_id for j in ran), None) or "none (every row was already written)",
        "ray/datasets": ", ".join(j.dataset for j in ran) or "none",
        "ray/output": engine.output,
        "ray/rows": sum(j.rows for j in jobs),
        "ray/rows_computed": sum(j.computed for j in jobs),
        "ray/rows_reused": sum(j.reused for j in jobs),
        "ray/seconds": round(sum(j.seconds for j in jobs), 1),
    }

