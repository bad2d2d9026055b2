"""Shared test fixtures: micro experiment configs in temporary homes."""

from pathlib import Path

import pytest
import yaml

from srlm.paths import CONFIG_DIR, REPO_ROOT

FIXTURE_KIT = REPO_ROOT / "tests" / "fixtures" / "kit"


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
