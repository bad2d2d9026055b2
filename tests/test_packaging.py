"""`pip install .` (not editable): the wheel carries sql/ and configs/ inside the srlm package, and an installed
copy finds them there through srlm/paths.py, from a working directory outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURE_KIT

from srlm.paths import REPO_ROOT

# what pyproject.toml builds from; copied so that the build leaves no build/ or egg-info in the checkout
SOURCES = ["pyproject.toml", "README.md", "definitions.py", "srlm", "assets", "resources", "sql", "configs"]

# run by the installed copy: what its lookups find
PROBE = """
import json, srlm, srlm.paths as paths
from srlm.config import load_config
from srlm.sqlfiles import sql_text
from srlm.warehouse import union_view_sql
print(json.dumps({
    "package": srlm.__file__,
    "sql_dir": str(paths.SQL_DIR),
    "config_dir": str(paths.CONFIG_DIR),
    "definitions": str(paths.DEFINITIONS_FILE),
    "config_source": load_config().source_file,
    "queries": {p.stem: sql_text(p.stem) for p in sorted(paths.SQL_DIR.glob("*.sql"))},
    "views": union_view_sql(),
}))
"""


def _checkout_files(folder: str, pattern: str) -> dict[str, str]:
    return {p.relative_to(REPO_ROOT / folder).as_posix(): p.read_text() for p in sorted((REPO_ROOT / folder).glob(pattern))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_every_query_view_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = (
        {f"srlm/sql/{name}" for name in _checkout_files("sql", "*.sql")}
        | {f"srlm/sql/views/{name}" for name in _checkout_files("sql/views", "*.sql")}
        | {f"srlm/configs/{name}" for name in _checkout_files("configs", "*.yaml")}
    )
    assert {"srlm/sql/select_length.sql", "srlm/sql/views/candidates.sql", "srlm/configs/default.yaml"} <= expected
    assert expected <= names
    assert {"definitions.py", "assets/__init__.py", "resources/__init__.py", "srlm/engines/__init__.py"} <= names


def test_an_installed_copy_finds_its_queries_and_default_config(wheel, tmp_path):
    site = (tmp_path / "site").resolve()
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by unpacking
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SRLM_CONFIG", "SRLM_HOME")}
    env.update(PYTHONPATH=str(site), SRLM_DATA_KIT=str(FIXTURE_KIT))
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)

    assert found["package"] == str(site / "srlm" / "__init__.py")
    assert found["sql_dir"] == str(site / "srlm" / "sql")
    assert found["config_dir"] == str(site / "srlm" / "configs")
    assert found["config_source"] == str(site / "srlm" / "configs" / "default.yaml")
    assert found["definitions"] == str(site / "definitions.py")
    assert found["queries"] == {Path(name).stem: text for name, text in _checkout_files("sql", "*.sql").items()}
    assert found["views"] == {Path(name).stem: text for name, text in _checkout_files("sql/views", "*.sql").items()}


def test_srlm_writes_the_checkouts_dagster_instance_settings():
    """An installed copy has no dagster.yaml beside it: the CLI carries the same settings."""
    from srlm.cli import DAGSTER_INSTANCE_SETTINGS

    assert yaml.safe_load(DAGSTER_INSTANCE_SETTINGS) == yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
