"""Checkpoint identity: a readable prefix plus a fingerprint of the files that make the model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

SMALL_FILE = 64 * 1024 * 1024  # files above this are fingerprinted by name and size, not content


def directory_fingerprint(path: str | Path) -> str:
    """Hash of every file under `path` (relative name + content; name + size for very large files, so a
    multi-GB base model is identified without reading all of it)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        size = file.stat().st_size
        digest.update(f"{rel}\x1f{size}\x1f".encode())
        if size <= SMALL_FILE:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def checkpoint_id_for(prefix: str, path: str | Path) -> str:
    """e.g. "M2-3fa2c9d1e0b4": the model's role in the experiment and its content fingerprint."""
    return f"{prefix}-{directory_fingerprint(path)}"


def commit_dir(staging: Path, final: Path) -> Path:
    """Move a finished model folder to its content-addressed place; identical content already there wins."""
    if final.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    return final
