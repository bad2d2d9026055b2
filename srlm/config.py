"""The experiment config: schema, loading, validation with errors that name the key and the file.

`configs/default.yaml` holds every key with its documented default; a user config is merged over it
(mappings key by key, lists replaced) and the result is validated here. Nothing below repeats a default
of that file, except the per-item defaults of list entries (a list replaces the default list whole).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srlm.arms import Arm, parse_arm
from srlm.kit import KitNotFound, find_data_kit
from srlm.paths import DEFAULT_CONFIG
from srlm.registry import BENCHMARKS, BenchmarkName, SelectorName
from srlm.voting import check_sample_counts

CONFIG_ENV = "SRLM_CONFIG"
HOME_ENV = "SRLM_HOME"
KIT_TOKEN = "{kit}"
BOOTSTRAP = "bootstrap"


class ConfigError(ValueError):
    """A config problem; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------- schema


class Experiment(_Section):
    name: str = Field(min_length=1)
    seed: int
    iterations: int = Field(ge=0, le=100)
    arms: list[str] = Field(min_length=1)


# storage_options keys that would carry credentials: those come from the standard AWS environment variables
CREDENTIAL_KEYS = {"key", "secret", "token", "password", "access_key", "secret_key", "session_token",
                   "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}


def _credential_keys(node: Any) -> set[str]:
    if not isinstance(node, dict):
        return set()
    found = {k for k in node if str(k).lower() in CREDENTIAL_KEYS}
    return found.union(*(_credential_keys(v) for v in node.values()))


class Paths(_Section):
    home: Optional[str]
    storage: Optional[str]
    storage_options: dict[str, Any]
    data_kit: Optional[str]

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        if found := sorted(_credential_keys(options)):
            raise ValueError(
                f"holds credentials ({', '.join(found)}); they come from the standard AWS environment variables "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), never from the config"
            )
        return options

    def open_storage(self):
        """Where tables/, shards/ and checkpoints/ live: `storage`, else the home (a srlm.storage.Storage)."""
        from srlm.storage import Storage

        return Storage(self.storage or self.home, self.storage_options)


class SourceColumns(_Section):
    """Which column of the file holds each field (instruction and output are required; a missing
    optional column reads as empty; id null = a content hash)."""

    instruction: str = "instruction"
    output: str = "output"
    input: Optional[str] = "input"
    id: Optional[str] = None
    rationale: Optional[str] = "rationale"


class InstructionSource(_Section):
    name: Optional[str] = None
    path: str
    format: Literal["auto", "json", "jsonl", "parquet"] = "auto"
    columns: SourceColumns = SourceColumns()
    answer_delimiter: Optional[str] = None
    strip_calc_annotations: bool = False
    sample: Optional[int] = Field(default=None, ge=1)


DType = Literal["auto", "float32", "bfloat16", "float16"]  # model.dtype, as the engines and the trainer take it


class Pretraining(_Section):
    """The bootstrap model's sizes and pretraining budget (srlm.bootstrap.BootstrapSettings adds the seed)."""

    vocab_size: int = Field(ge=300)
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    context_length: int = Field(ge=64)
    seq_len: int = Field(ge=16)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    max_seconds: float = Field(gt=0)
    max_steps: int = Field(ge=1)
    heldout_fraction: float = Field(gt=0, lt=0.5)
    mixed_precision: Literal["auto", "bf16", "no"]

    @model_validator(mode="after")
    def _shapes(self) -> "Pretraining":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.seq_len > self.context_length:
            raise ValueError(f"seq_len ({self.seq_len}) cannot exceed context_length ({self.context_length})")
        return self


class Bootstrap(Pretraining):
    corpus: list[InstructionSource] = Field(min_length=1)


class Model(_Section):
    base: str = Field(min_length=1)
    trust_remote_code: bool
    device: str
    dtype: DType
    bootstrap: Bootstrap

    @property
    def is_bootstrap(self) -> bool:
        return self.base == BOOTSTRAP


class Instructions(_Section):
    seed: int
    sources: list[InstructionSource] = Field(min_length=1)
    max_rejected_fraction: float = Field(ge=0, le=1)


class CatalystColumns(_Section):
    instruction: str = "instruction"
    input: Optional[str] = "input"
    short_rationale: str = "short_rationale"
    output: str = "output"
    rationale: str = "rationale"
    id: Optional[str] = None


class FileCatalyst(_Section):
    path: Optional[str]
    format: Literal["auto", "json", "jsonl", "parquet"] = "auto"
    columns: CatalystColumns = CatalystColumns()


class TeacherCatalyst(_Section):
    backend: Literal["openai", "transformers"]
    model: Optional[str]
    base_url: str
    api_key_env: Optional[str]
    temperature: float = Field(ge=0)
    max_new_tokens: int = Field(ge=1)


class Catalyst(_Section):
    source: Literal["derived", "file", "teacher"]
    size: int = Field(ge=1)
    seed: int
    pool: InstructionSource
    file: FileCatalyst
    teacher: TeacherCatalyst
    max_rejected_fraction: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _source_settings(self) -> "Catalyst":
        if self.source == "file" and not self.file.path:
            raise ValueError("source is 'file' but catalyst.file.path is not set")
        if self.source == "teacher" and not self.teacher.model:
            raise ValueError("source is 'teacher' but catalyst.teacher.model is not set")
        return self


class Generation(_Section):
    backend: Literal["transformers", "vllm"]
    batch_size: int = Field(ge=1)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    tensor_parallel_size: int = Field(ge=1)


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values of max_lora_rank vLLM accepts


def vllm_lora_rank(r: int) -> int:
    """The smallest max_lora_rank vLLM accepts that serves adapters of rank r (r: 12 -> 16)."""
    for rank in VLLM_LORA_RANKS:
        if r <= rank:
            return rank
    raise ValueError(
        f"LoRA rank {r} (train.lora.r) is above {VLLM_LORA_RANKS[-1]}, the largest rank vLLM serves; lower it, "
        "or generate with generation.backend: transformers"
    )


class Executor(_Section):
    """Where generation, likelihood scoring and evaluation sampling run (srlm/distributed.py for ray)."""

    kind: Literal["local", "ray"]
    address: Optional[str]
    num_cpus: Optional[int] = Field(ge=1)
    actors: int = Field(ge=1)
    cpus_per_actor: Optional[int] = Field(ge=1)

    @model_validator(mode="after")
    def _local_cpus_only(self) -> "Executor":
        if self.address and self.num_cpus is not None:
            raise ValueError("num_cpus sizes a Ray started on this machine; a cluster at `address` has its own CPUs")
        return self


class Expand(_Section):
    examples: Optional[int] = Field(ge=1)
    candidates: int = Field(ge=1, le=1024, description="N: candidates per example")
    temperature: float = Field(ge=0, le=10, description="sampling temperature (0 = greedy)")
    top_p: float = Field(gt=0, le=1, description="nucleus sampling mass, in (0, 1]")
    max_new_tokens: int = Field(ge=1, description="longest candidate rationale, in tokens")
    shard_size: int = Field(ge=1)


class Select(_Section):
    selector: SelectorName
    margin: Optional[float] = Field(
        ge=0, description="keep a winner only if it beats its parent by more than this (empty: always)"
    )
    degeneration_ngram: int = Field(ge=1)
    max_repeated_fraction: float = Field(gt=0, le=1)


class Lora(_Section):
    r: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: Union[str, list[str]]


class TrainRun(_Section):
    """The train keys one training run takes (srlm.training.TrainSettings adds the seed, device and dtype)."""

    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    grad_accum: int = Field(ge=1)
    max_length: int = Field(ge=16)
    warmup_ratio: float = Field(ge=0, lt=1)
    processes: int = Field(ge=1)
    fsdp: bool
    gradient_checkpointing: bool
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]]


class Train(TrainRun):
    init: Literal["base", "previous"]
    lora: Lora


class Benchmark(_Section):
    enabled: bool = True
    protocol: Literal["generate", "loglikelihood"] = "generate"
    limit: Optional[int] = Field(default=None, ge=1, description="questions evaluated (empty = all)")


class Eval(_Section):
    data: str
    seed: int
    samples: list[int] = Field(min_length=1, description="N values: majority vote over N sampled answers")
    temperature: float = Field(ge=0, le=10, description="sampling temperature of the generate protocol")
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=1)
    benchmarks: dict[BenchmarkName, Benchmark]
    decontamination_ngram: int = Field(ge=4)
    comparison_resamples: int = Field(ge=1000)

    @field_validator("samples")
    @classmethod
    def _distinct_positive_samples(cls, samples: list[int]) -> list[int]:
        check_sample_counts(samples, "samples")
        return samples

    @model_validator(mode="after")
    def _checks(self) -> "Eval":
        for name, bench in self.benchmarks.items():
            if bench.protocol == "loglikelihood" and not BENCHMARKS[name].multiple_choice:
                raise ValueError(f"benchmarks.{name}: protocol 'loglikelihood' needs multiple choice; use 'generate'")
        return self

    @property
    def enabled(self) -> dict[str, Benchmark]:
        return {name: b for name, b in self.benchmarks.items() if b.enabled}


class ExperimentConfig(_Section):
    experiment: Experiment
    paths: Paths
    model: Model
    instructions: Instructions
    catalyst: Catalyst
    generation: Generation
    executor: Executor
    expand: Expand
    select: Select
    train: Train
    eval: Eval

    # where it came from (not config keys)
    source_file: str = Field(default=str(DEFAULT_CONFIG), exclude=True)

    @model_validator(mode="after")
    def _arms(self) -> "ExperimentConfig":
        names = [parse_arm(name, self.select.selector).name for name in self.experiment.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment.arms: an arm is listed twice ({', '.join(names)})")
        return self

    @model_validator(mode="after")
    def _vllm_serves_the_lora_rank(self) -> "ExperimentConfig":
        if self.generation.backend == "vllm":
            vllm_lora_rank(self.train.lora.r)
        return self

    @property
    def arms(self) -> list[Arm]:
        """The arms, each named in full ("srlm" -> "srlm/<select.selector>")."""
        return [parse_arm(name, self.select.selector) for name in self.experiment.arms]

    @property
    def home(self) -> Path:
        return Path(self.paths.home)

    def section_hash(self, *names: str) -> str:
        """Short stable hash of some sections: feeds asset code versions so a recipe change marks them stale."""
        payload = {n: _dump(getattr(self, n)) for n in names}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _dump(section: Any) -> Any:
    return section.model_dump(mode="json") if isinstance(section, BaseModel) else section


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> ExperimentConfig:
    """Load `path` (else $SRLM_CONFIG, else the embedded default), merged over the default file."""
    if path is None and os.environ.get(CONFIG_ENV):
        path = os.environ[CONFIG_ENV]
    default_raw = _read_yaml(DEFAULT_CONFIG)
    user_file = Path(path).expanduser().resolve() if path is not None else None
    user_raw = _read_yaml(user_file) if user_file is not None else {}
    if overrides:
        user_raw = _merge(user_raw, overrides)
    merged = _merge(default_raw, user_raw)
    shown_file = user_file or DEFAULT_CONFIG
    try:
        cfg = ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, user_raw, user_file)) from None
    cfg.source_file = str(shown_file)
    _resolve_paths(cfg, user_raw, user_file)
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- errors


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _in_raw(raw: Any, loc: tuple) -> bool:
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        elif isinstance(raw, list) and isinstance(part, int) and part < len(raw):
            raw = raw[part]
        else:
            return False
    return True


def _known_keys(loc: tuple) -> list[str]:
    """Field names of the section at `loc` (for 'did you mean' suggestions)."""
    tp: Any = ExperimentConfig
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [k for k, f in tp.model_fields.items() if not f.exclude]
    if get_origin(tp) is dict:
        key_type = get_args(tp)[0]
        return list(get_args(key_type)) if get_origin(key_type) is Literal else []
    return []


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X, list[X] -> X."""
    while get_origin(tp) in (Union, list):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1:
            break
        tp = args[0]
    return tp


def _describe(exc: ValidationError, user_raw: dict, user_file: Path | None) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        # pydantic appends the literal/union branch to loc for some errors; keep the real key path
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("literal[", "function-"))))
        bad_key = err["type"] == "extra_forbidden" or (loc and loc[-1] == "[key]")
        if loc and loc[-1] == "[key]":  # a mapping key outside its allowed set, e.g. an unknown benchmark
            loc = loc[:-1]
        file = user_file if (user_file and _in_raw(user_raw, loc)) else DEFAULT_CONFIG
        if bad_key:
            parent, key = loc[:-1], loc[-1]
            known = _known_keys(parent)
            hint = difflib.get_close_matches(str(key), known, n=1)
            where = f"in '{_dotted(parent)}'" if parent else "at the top level"
            msg = f"unknown key '{key}' {where}"
            msg += f" (did you mean '{hint[0]}'?)" if hint else (f" (known keys: {', '.join(known)})" if known else "")
            lines.append(f"{file}: {msg}")
            continue
        if err["type"] == "missing":
            lines.append(f"{file}: {_dotted(loc)}: required key is missing")
            continue
        got = err.get("input")
        got_text = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
        message = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
        lines.append(f"{file}: {_dotted(loc) or 'config'}: {message}{got_text}")
    return "invalid config:\n  " + "\n  ".join(lines)


# ---------------------------------------------------------------------------------------------- paths


def _uri_problem(uri: str) -> str | None:
    """What is wrong with a storage URI (no filesystem for its protocol, no bucket), or None."""
    import fsspec

    protocol, rest = uri.split("://", 1)
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        return f"no filesystem for {protocol}:// ({exc})"
    return None if rest.strip("/") else f"names no bucket: {uri}"


def _resolve_paths(cfg: ExperimentConfig, user_raw: dict, user_file: Path | None) -> None:
    """Make every path absolute ({kit} and config-relative), and check that the files it needs exist."""
    from srlm.base_models import PRESETS

    config_dir = user_file.parent if user_file else Path.cwd()
    kit: list[Path] = []  # found lazily: only configs that use {kit} need the kit

    def err(loc: tuple, message: str) -> ConfigError:
        file = user_file if (user_file and _in_raw(user_raw, loc)) else DEFAULT_CONFIG
        return ConfigError(f"{file}: {_dotted(loc)}: {message}")

    def resolve(value: str, loc: tuple) -> str:
        if KIT_TOKEN in value:
            if not kit:
                try:
                    kit.append(find_data_kit(cfg.paths.data_kit))
                except KitNotFound as exc:
                    raise err(loc, f"uses {KIT_TOKEN}, but {exc}") from None
            value = value.replace(KIT_TOKEN, str(kit[0]))
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (config_dir / path).resolve())

    def need_file(value: str, loc: tuple, directory: bool = False) -> str:
        path = resolve(value, loc)
        found, kind = Path(path), "directory" if directory else "file"
        if found.is_dir() if directory else found.is_file():
            return path
        if found.exists():
            what = "a directory" if found.is_dir() else "a file" if found.is_file() else "not a regular file"
            raise err(loc, f"is {what}, expected a {kind}: {path}")
        raise err(loc, f"{kind} not found: {path}")

    if cfg.paths.data_kit is not None:
        cfg.paths.data_kit = resolve(cfg.paths.data_kit, ("paths", "data_kit"))
    home = cfg.paths.home if cfg.paths.home is not None else os.environ.get(HOME_ENV, ".srlm")
    if "://" in home:
        raise err(("paths", "home"), f"is a local folder (Dagster instance, run lock, catalog), got {home}; "
                  "put tables, shards and checkpoints on an object store with paths.storage")
    cfg.paths.home = resolve(home, ("paths", "home")) if cfg.paths.home else str(Path(home).resolve())
    if cfg.paths.storage is not None:
        storage = cfg.paths.storage
        problem = _uri_problem(storage) if "://" in storage else None
        if problem:
            raise err(("paths", "storage"), problem)
        cfg.paths.storage = storage.rstrip("/") if "://" in storage else resolve(storage, ("paths", "storage"))

    for i, src in enumerate(cfg.instructions.sources):
        src.path = need_file(src.path, ("instructions", "sources", i, "path"))
    if cfg.model.is_bootstrap:
        for i, src in enumerate(cfg.model.bootstrap.corpus):
            src.path = need_file(src.path, ("model", "bootstrap", "corpus", i, "path"))
    elif cfg.model.base not in PRESETS:
        gguf = cfg.model.base.lower().endswith(".gguf")
        cfg.model.base = need_file(cfg.model.base, ("model", "base"), directory=not gguf)
    cat = cfg.catalyst
    if cat.source in ("derived", "teacher"):
        cat.pool.path = need_file(cat.pool.path, ("catalyst", "pool", "path"))
    if cat.source == "file":
        cat.file.path = need_file(cat.file.path, ("catalyst", "file", "path"))
    elif cat.source == "teacher" and cat.teacher.backend == "transformers":
        cat.teacher.model = need_file(cat.teacher.model, ("catalyst", "teacher", "model"), directory=True)
    if cfg.eval.enabled:
        cfg.eval.data = need_file(cfg.eval.data, ("eval", "data"), directory=True)
