"""Shared test fixtures: micro experiment configs in temporary homes, and one real micro run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from srlm.paths import CONFIG_DIR, REPO_ROOT

FIXTURE_KIT = REPO_ROOT / "tests" / "fixtures" / "kit"


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
