"""Checkpoint identity (a readable prefix plus a fingerprint of the files that make the model), where a
committed checkpoint lives (the storage: srlm/storage.py) and where the engines read it (a local folder)."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from srlm.storage import Storage, is_uri

SMALL_FILE = 64 * 1024 * 1024  # files above this are fingerprinted by name and size, not content


# peft writes the home's base model path into these, and target_modules in set order (which varies by
# process): neither changes the model, so the fingerprint leaves them out
MODEL_CARD = "README.md"
ADAPTER_CONFIG = "adapter_config.json"


def _identity_bytes(file: Path) -> bytes:
    """What of a file identifies the model: its bytes, or an adapter config without its machine-specific parts."""
    if file.name != ADAPTER_CONFIG:
        return file.read_bytes()
    config = json.loads(file.read_text())
    config.pop("base_model_name_or_path", None)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    return json.dumps(config, sort_keys=True).encode()


def directory_fingerprint(path: str | Path) -> str:
    """Hash of every file under `path` that makes the model (relative name + content; name + size for very
    large files, so a multi-GB base model is identified without reading all of it): the same on every machine."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MODEL_CARD):
        rel = file.relative_to(root).as_posix()
        size = file.stat().st_size
        if size <= SMALL_FILE:
            digest.update(f"{rel}\x1f".encode() + _identity_bytes(file))
        else:
            digest.update(f"{rel}\x1f{size}\x1f".encode())
    return digest.hexdigest()[:12]


def checkpoint_id_for(prefix: str, path: str | Path) -> str:
    """e.g. "M2-3fa2c9d1e0b4": the model's role in the experiment and its content fingerprint."""
    return f"{prefix}-{directory_fingerprint(path)}"


def commit_dir(staging: Path, final: Path) -> Path:
    """Move a finished model folder to its content-addressed place; identical content already there wins.
    Across filesystems (a storage folder on another disk than the home) it is copied beside its place and
    renamed from there: a folder under its final name is always complete."""
    if final.exists():
        shutil.rmtree(staging)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(final)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        shutil.copytree(staging, copy, dirs_exist_ok=True)
        copy.rename(final)
        shutil.rmtree(staging)
    return final


def cache_dir(home: str | Path, path: str) -> Path:
    """Where this machine keeps its copy of a checkpoint committed to an object store: the same
    checkpoints/<schema>/<id> under the home."""
    schema, name = path.rstrip("/").rsplit("/", 2)[-2:]
    return Path(home) / "checkpoints" / schema / name


def commit_checkpoint(staging: Path, storage: Storage, home: str | Path, schema: str, checkpoint_id: str) -> str:
    """Commit a trained checkpoint folder to storage/checkpoints/<schema>/<id>; returns that path (the
    checkpoint's `path`). To an object store the folder is uploaded, marker last, and the staging folder
    becomes this machine's cached copy, so its engines need no download."""
    final = storage.join("checkpoints", schema, checkpoint_id)
    if storage.is_local:
        return str(commit_dir(staging, Path(final)))
    storage.put_dir(staging, final)
    commit_dir(staging, cache_dir(home, final))
    return final


def local_checkpoint(path: str, storage: Storage, home: str | Path) -> str:
    """A local folder holding a committed checkpoint, for the engines and the trainer: `path` itself when
    local, else the home's cached copy, fetched once (storage.NotCommitted when the folder has no marker)."""
    if not is_uri(path):
        return path
    return str(storage.fetch_dir(path, cache_dir(home, path)))


def _leftovers_in(root: Path) -> list[Path]:
    found = [p for sub in ("models", "checkpoints") for p in (root / sub).rglob("run-*") if p.is_dir()]
    for sub in ("models", "checkpoints", "shards", "tables"):
        found += [p for p in (root / sub).rglob(".*") if ".tmp" in p.name or ".old-" in p.name]
    return found


def leftovers(home: str | Path, storage: Storage | None = None) -> list[Path]:
    """What a killed run leaves behind and no later run reads: staging folders of models and checkpoints
    (`run-<id>`, committed under their content id only when complete) and half-written temp files and
    folders (`.<name>.tmp-*`, `.<name>.*.tmp`), in the home and in a local storage folder. An object store
    holds none: its objects appear whole, and a checkpoint folder whose upload was cut off has no marker,
    so readers ignore it and the next commit of that checkpoint overwrites it (removing it here could cut
    off another machine's upload under way)."""
    roots = [Path(home)]
    if storage is not None and storage.is_local and Path(storage.root) != Path(home).resolve():
        roots.append(Path(storage.root))
    return sorted({p for root in roots for p in _leftovers_in(root)})


def remove_leftovers(home: str | Path, storage: Storage | None = None) -> list[Path]:
    """Remove `leftovers(home, storage)`; only safe while holding the home's run lock (no run is writing
    them), and so for a local storage folder only when no other home writes into it."""
    removed = leftovers(home, storage)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
