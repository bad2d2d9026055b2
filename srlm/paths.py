"""Where the project's own files live, in a checkout (`pip install -e .`) and in an installed wheel.

sql/ and configs/ sit at the top of the checkout; a wheel ships them inside this package as srlm/sql/ and
srlm/configs/ (pyproject.toml's [tool.setuptools] maps them there), and definitions.py beside the package.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def project_dir(name: str) -> Path:
    """sql/ or configs/: the copy shipped inside the package when installed, else the checkout's.

    The installed copy is looked for first: beside an installed package (site-packages) a folder named
    `configs` or `sql` may belong to anything."""
    shipped = PACKAGE_DIR / name
    return shipped if shipped.is_dir() else REPO_ROOT / name


SQL_DIR = project_dir("sql")
CONFIG_DIR = project_dir("configs")
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
DEFINITIONS_FILE = REPO_ROOT / "definitions.py"
