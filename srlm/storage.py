"""Where tables, shards and checkpoints live: a local folder or an object store URI (`s3://bucket/prefix`).

Every path or URI operation of the project goes through here (fsspec for URIs, plain files for local paths):

- Parquet files are written atomically. Locally: a temp file beside the target, fsync, rename. On an object
  store: the file is written to a local temp file first and then uploaded in one PUT (or one multipart
  upload, completed only at the end), so the object appears whole or not at all, and a writer that fails
  while writing leaves no object.
- A folder (a checkpoint) is uploaded file by file, then a completion marker listing every file and its size
  is written last. A reader treats a folder without the marker as absent, and fetches a committed folder into
  a local cache through a temp folder and one atomic rename.
- DuckDB reads an object store through the same fsspec filesystem, registered on its connection read-only.

Credentials are never passed here: fsspec's S3 driver reads the standard AWS environment variables.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

MARKER = "_COMMITTED"  # the last object of a committed folder: {"files": {relative name: size}}
TAIL_BYTES = 64 * 1024  # the end of a Parquet file (footer and metadata, for most tables) fetched in one request


class NotCommitted(FileNotFoundError):
    """A folder on the storage without its completion marker: absent, as far as readers go."""


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def protocol_of(uri: str) -> str:
    return uri.split("://", 1)[0]


@dataclass(frozen=True)
class Storage:
    """A storage root (an absolute local folder, or a URI without a trailing slash) and the options its
    fsspec filesystem is made with (e.g. {"endpoint_url": ...}). Methods take full paths or URIs."""

    root: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        root = str(self.root)
        object.__setattr__(self, "root", root.rstrip("/") if is_uri(root) else str(Path(root).expanduser().resolve()))
        object.__setattr__(self, "options", dict(self.options or {}))

    def __hash__(self) -> int:  # by value, so a storage can key a cache
        return hash(json.dumps(self.record(), sort_keys=True, default=str))

    @property
    def is_local(self) -> bool:
        return not is_uri(self.root)

    @cached_property
    def fs(self) -> AbstractFileSystem:
        """The root's filesystem; listings are not cached, so files written by other processes are seen."""
        if self.is_local:
            return fsspec.filesystem("file")
        return fsspec.filesystem(protocol_of(self.root), use_listings_cache=False, **self.options)

    def join(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if not self.is_local else str(Path(self.root, *parts))

    def record(self) -> dict:
        """What another process needs to open this storage again (no credentials: they never come from here)."""
        return {"root": self.root, "options": self.options}

    # ------------------------------------------------------------------------------------------- files

    def is_file(self, path: str | Path) -> bool:
        return self.fs.isfile(str(path)) if is_uri(path) else Path(path).is_file()

    def glob(self, folder: str, pattern: str) -> list[str]:
        """Files under `folder` matching a relative glob pattern, as full paths or URIs, sorted."""
        if not is_uri(folder):
            return sorted(p for p in glob.glob(os.path.join(glob.escape(folder), pattern)) if os.path.isfile(p))
        found = self.fs.glob(f"{folder.rstrip('/')}/{pattern}", detail=True)
        return sorted(self.fs.unstrip_protocol(p) for p, info in found.items() if info["type"] == "file")

    def stamp(self, path: str | Path) -> str:
        """Changes whenever the file is rewritten (the ETag of an object, size and mtime of a local file)."""
        if is_uri(path):
            return str(self.fs.ukey(str(path)))
        stat = Path(path).stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def read_parquet(self, path: str | Path, columns: list[str] | None = None) -> pa.Table:
        if not is_uri(path):
            return pq.read_table(path, columns=columns)
        with self.fs.open(str(path), "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def write_parquet(self, table: pa.Table, path: str | Path) -> str | Path:
        """Write `table` to `path` atomically; returns the path (a Path when local)."""
        if not is_uri(path):
            return _write_local(table, Path(path))
        fd, tmp = tempfile.mkstemp(prefix=".srlm-upload-", suffix=".parquet.tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
            self.fs.put_file(tmp, str(path))
        finally:
            Path(tmp).unlink(missing_ok=True)
        return str(path)

    # ------------------------------------------------------------------------------------------- folders

    def is_committed(self, path: str) -> bool:
        """A folder on an object store counts only once its marker is there."""
        return self.fs.isfile(f"{path}/{MARKER}")

    def put_dir(self, local: Path, path: str) -> None:
        """Upload a finished local folder to `path`, marker last; a folder already committed there is kept
        (its content is identical: folders are named by their content)."""
        if self.is_committed(path):
            return
        files = {f.relative_to(local).as_posix(): f.stat().st_size for f in sorted(local.rglob("*")) if f.is_file()}
        for name in files:
            self.fs.put_file(str(local / name), f"{path}/{name}")
        self.fs.pipe_file(f"{path}/{MARKER}", json.dumps({"files": files}, sort_keys=True).encode())

    def fetch_dir(self, path: str, dest: Path) -> Path:
        """A local copy of the committed folder `path` at `dest` (downloaded once; `dest` is complete
        whenever it exists: it appears by one rename). Raises NotCommitted for a folder without its marker."""
        if dest.is_dir():
            return dest
        try:
            files = json.loads(self.fs.cat_file(f"{path}/{MARKER}"))["files"]
        except FileNotFoundError:
            raise NotCommitted(f"{path} is not committed (no {MARKER}): an upload was interrupted or is under way") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            for name, size in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(f"{path}/{name}", str(tmp / name))
                if (tmp / name).stat().st_size != size:
                    raise OSError(f"{path}/{name}: {(tmp / name).stat().st_size} bytes, the marker says {size}")
            _rename_unless_there(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ------------------------------------------------------------------------------------------- DuckDB

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let `con` read this storage's URIs (nothing to do for a local folder): its filesystem, read-only."""
        if self.is_local:
            return
        reader = ReadOnlyFileSystem(self.fs)
        if reader.name not in con.list_filesystems():
            con.register_filesystem(reader)

    def allowed_directory(self, path: str) -> str:
        """`path` as DuckDB's allowed_directories wants a folder: resolved, with a trailing separator."""
        return path.rstrip("/") + "/" if is_uri(path) else str(Path(path).resolve()) + os.sep

    def file(self, path: str | Path) -> "StoredFile":
        return StoredFile(self, str(path))


@dataclass(frozen=True)
class StoredFile:
    """A Parquet file on a storage, handed to DuckDB queries (srlm/sqlfiles.py registers its filesystem)."""

    storage: Storage
    path: str

    def __str__(self) -> str:
        return self.path


class ReadOnlyFileSystem(AbstractFileSystem):
    """An fsspec filesystem as DuckDB sees it: opening for reading, listing and file facts go through; every
    write, move or removal is refused, so a query cannot change the storage whatever it says.

    DuckDB asks for a file's existence, size and modification time separately, and reads its footer again,
    each time it binds a view over it (a catalog refresh binds each table several times, through the union
    views): one connection asks the store once per file for its facts and its last bytes, and remembers."""

    cachable = False

    def __init__(self, inner: AbstractFileSystem):
        super().__init__()
        self.inner = inner
        self.protocol = inner.protocol  # DuckDB routes the URIs of these protocols here
        self._infos: dict[str, dict] = {}
        self._tails: dict[str, bytes] = {}

    @property
    def name(self) -> str:
        """The name DuckDB registers it under: its first protocol."""
        return self.protocol if isinstance(self.protocol, str) else self.protocol[0]

    def info(self, path, **kwargs):
        key = self.inner._strip_protocol(path)
        if key not in self._infos:
            self._infos[key] = self.inner.info(path)
        return self._infos[key]

    def open(self, path, mode="rb", **kwargs):
        if mode != "rb":
            raise PermissionError(f"the storage is read-only here: cannot open {path} with mode {mode!r}")
        size, key = self.info(path)["size"], self.inner._strip_protocol(path)
        if key not in self._tails:
            self._tails[key] = self.inner.cat_file(path, start=max(0, size - TAIL_BYTES), end=size) if size else b""
        return _TailCachedFile(lambda: self.inner.open(path, "rb", size=size, **kwargs), size, self._tails[key])

    def glob(self, path, **kwargs):
        if not any(c in path for c in "*?["):  # DuckDB globs plain file names too
            return [path] if self.isfile(path) else []
        return self.inner.glob(path, **kwargs)

    def modified(self, path):
        info = self.info(path)
        return info["LastModified"] if "LastModified" in info else self.inner.modified(path)

    def ls(self, path, detail=True, **kwargs):
        return self.inner.ls(path, detail=detail)

    def unstrip_protocol(self, name):
        return self.inner.unstrip_protocol(name)

    def _refuse(self, *args, **kwargs):
        raise PermissionError("the storage is read-only here: no write, move or removal")

    mv = rm = rm_file = mkdir = makedirs = touch = pipe_file = put_file = cp_file = _refuse


class _TailCachedFile(io.RawIOBase):
    """A file read from the store whose last bytes are already in memory: reads within them cost no request;
    other reads go to the store's own file object, opened on the first of them."""

    def __init__(self, open_file, size: int, tail: bytes):
        super().__init__()
        self._open_file, self._size, self._tail = open_file, size, tail
        self._pos, self._file = 0, None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence] + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        tail_start = self._size - len(self._tail)
        if self._pos >= tail_start:
            data = self._tail[self._pos - tail_start : end - tail_start]
        else:
            self._file = self._file or self._open_file()
            self._file.seek(self._pos)
            data = self._file.read(end - self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _rename_unless_there(src: Path, dest: Path) -> None:
    """Rename a finished folder into place; a complete copy already there (another process's) wins."""
    try:
        src.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise


def _write_local(table: pa.Table, path: Path) -> Path:
    """Temp file beside the target + fsync + rename: a crash never leaves a half file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
