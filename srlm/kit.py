"""Finding the offline data kit (instruction data and benchmarks) without copying it into the repo."""

from __future__ import annotations

import os
from pathlib import Path

from srlm.paths import REPO_ROOT

KIT_ENV = "SRLM_DATA_KIT"


class KitNotFound(FileNotFoundError):
    pass


def _looks_like_kit(path: Path) -> bool:
    return (path / "instruct").is_dir() and (path / "eval").is_dir()


def find_data_kit(explicit: str | os.PathLike | None = None) -> Path:
    """The kit folder: `explicit` (config), else $SRLM_DATA_KIT, else the first `shared/data` folder
    found in the working directory, the repo, or any of their parents."""
    if explicit is not None or os.environ.get(KIT_ENV):
        origin = "the config (paths.data_kit)" if explicit is not None else f"${KIT_ENV}"
        path = Path(explicit if explicit is not None else os.environ[KIT_ENV]).expanduser().resolve()
        if not _looks_like_kit(path):
            raise KitNotFound(f"data kit from {origin} is not a kit folder (no instruct/ and eval/ inside): {path}")
        return path
    searched = []
    for start in (Path.cwd().resolve(), REPO_ROOT):
        for base in (start, *start.parents):
            candidate = base / "shared" / "data"
            searched.append(candidate)
            if _looks_like_kit(candidate):
                return candidate
    raise KitNotFound(
        "the offline data kit was not found: set paths.data_kit in the config or $SRLM_DATA_KIT "
        f"to its folder (searched for shared/data in {len(searched)} places from the working directory and the repo)"
    )
