"""Shared test fixtures: micro experiment configs in temporary homes, one real micro run, the settings the
engines and the trainer take (from the config files, as `srlm run` builds them), and a fake engine."""

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest
import yaml

from srlm.config import ExperimentConfig, Lora, Train, load_config
from srlm.engines.types import Completion, GenerationOutput, LogProb, Message, Prompt, SamplingParams
from srlm.paths import CONFIG_DIR, DEFAULT_CONFIG, REPO_ROOT

FIXTURE_KIT = REPO_ROOT / "tests" / "fixtures" / "kit"
DEFAULTS = yaml.safe_load(DEFAULT_CONFIG.read_text())  # configs/default.yaml: where the tests' settings start


def put_table(home: Path, key: tuple[str, str], schema: dict, rows: list[dict]) -> None:
    """Write a small hand-made table asset (missing columns are null) where the IO manager would."""
    from assets.tables import frame
    from srlm.warehouse import table_path, write_parquet_atomic

    write_parquet_atomic(frame(({c: r.get(c) for c in schema} for r in rows), schema).to_arrow(), table_path(home, key))


def write_micro_config(directory: Path) -> tuple[Path, Path]:
    """configs/micro.yaml with absolute kit and home paths, in `directory`; returns (config, home)."""
    data = yaml.safe_load((CONFIG_DIR / "micro.yaml").read_text())
    home = directory / "home"
    data["paths"] = {"data_kit": str(FIXTURE_KIT), "home": str(home)}
    config = directory / "micro.yaml"
    config.write_text(yaml.safe_dump(data))
    return config, home


def run_micro_experiment(directory: Path) -> tuple[Path, Path]:
    """`srlm run` of the micro config through the CLI (a real materialization); returns (config, home)."""
    config, home = write_micro_config(directory)
    env = {k: v for k, v in os.environ.items() if k not in ("SRLM_CONFIG", "SRLM_HOME", "DAGSTER_HOME")}
    proc = subprocess.run(
        [sys.executable, "-m", "srlm.cli", "run", "--config", str(config)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    return config, home


@pytest.fixture
def micro_config(tmp_path: Path):
    """Write configs/micro.yaml (plus overrides) into tmp_path with its home there too; returns a writer."""

    def write(overrides: dict | None = None, name: str = "micro.yaml") -> Path:
        data = yaml.safe_load((CONFIG_DIR / "micro.yaml").read_text())
        data["paths"] = {"data_kit": str(FIXTURE_KIT), "home": str(tmp_path / "home")}
        for section, values in (overrides or {}).items():
            data.setdefault(section, {}).update(values)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No test sees the developer's own experiment settings."""
    for var in ("SRLM_CONFIG", "SRLM_HOME", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------- settings


@functools.cache
def micro_cfg() -> ExperimentConfig:
    """configs/micro.yaml as loaded (on the fixture kit). Not to be changed: it is shared."""
    return load_config(CONFIG_DIR / "micro.yaml")


def generation_resource(**changes):
    """The GenerationResource `srlm run` builds from configs/micro.yaml, with `changes`."""
    from resources import GenerationResource

    return GenerationResource(**{**GenerationResource.from_config(micro_cfg()).model_dump(), **changes})


def engine_settings(batch_size: int, device: str = "cpu", dtype: str = "auto"):
    """TransformersEngineSettings with the default model section's trust_remote_code."""
    from srlm.engines.transformers_engine import TransformersEngineSettings

    return TransformersEngineSettings(device, dtype, batch_size, DEFAULTS["model"]["trust_remote_code"])


def lora(**changes) -> Lora:
    """configs/default.yaml's train.lora with `changes`."""
    return Lora(**{**DEFAULTS["train"]["lora"], **changes})


def train_settings(**changes):
    """TrainSettings of configs/default.yaml's train section, seed 0, on the CPU in float32, with `changes`."""
    from srlm.training import TrainSettings

    base = TrainSettings.of(Train.model_validate(DEFAULTS["train"]), seed=0, device="cpu", dtype="float32")
    return TrainSettings(**{**base.model_dump(), **changes})


# ---------------------------------------------------------------------------------------------- engine


class FakeEngine:
    """The engine protocol (srlm.engines.types.Engine) without a model, deterministic. Words are tokens; a chat
    renders as <role>content</role> per message, then <assistant> when a reply is asked for.

    generate: the texts `completions` holds for a prompt (a raw string, or a chat's first message's content),
    else "sample <j>: <that text>"; every call lands in generate_calls as (prompts, params, adapter).
    logprobs: `logprobs` maps each (context, continuation) to a LogProb, or computes it; without it every
    continuation word scores -1. Every call lands in logprob_calls as (requests, adapter).
    """

    max_length = 4096

    def __init__(
        self,
        completions: dict[str, list[str]] | None = None,
        logprobs: dict[tuple[str, str], LogProb] | Callable[[str, str], LogProb] | None = None,
    ):
        self.completions = completions or {}
        self.scores = logprobs
        self.generate_calls: list[tuple[list[Prompt], SamplingParams, str | None]] = []
        self.logprob_calls: list[tuple[list[tuple[str, str]], str | None]] = []

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        turns = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return turns + ("<assistant>" if add_generation_prompt else "")

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, adapter: str | None = None) -> list[GenerationOutput]:
        self.generate_calls.append((list(prompts), params, adapter))
        outputs = []
        for i, prompt in enumerate(prompts):
            key = prompt if isinstance(prompt, str) else prompt[0]["content"]
            texts = self.completions.get(key) or [f"sample {j}: {key}" for j in range(params.n)]
            outputs.append(GenerationOutput(i, [Completion(t, len(t.split()), "stop") for t in texts[: params.n]]))
        return outputs

    def logprobs(self, requests: Sequence[tuple[str, str]], adapter: str | None = None) -> list[LogProb]:
        self.logprob_calls.append((list(requests), adapter))
        if isinstance(self.scores, dict):
            return [self.scores[r] for r in requests]
        score = self.scores or (lambda _context, continuation: LogProb(-float(len(continuation.split())), len(continuation.split())))
        return [score(context, continuation) for context, continuation in requests]
