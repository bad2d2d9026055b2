"""Where the project's own files live (the repo is installed editable: `pip install -e .`)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = REPO_ROOT / "sql"
CONFIG_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
DEFINITIONS_FILE = REPO_ROOT / "definitions.py"
