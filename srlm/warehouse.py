"""The warehouse: one Parquet file per table asset, and a DuckDB catalog of views over them.

Layout:
    <storage>/tables/<schema>/<name>.parquet   one file per table asset, key "<schema>/<name>" (e.g.
                                               iter_2/candidates); the storage is the home, another local
                                               folder or an object store URI (srlm/storage.py)
    <home>/warehouse.duckdb                    views only: <schema>.<name> per file, union views across
                                               iterations (sql/views/*.sql), no table data, so writers never
                                               hold it for long
    <home>/storage.json                        which storage the views read (root and fsspec options), so
                                               `srlm sql` opens it without the experiment config

Parquet files are written atomically (srlm/storage.py): a crash never leaves a half file that later reads
as complete.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import duckdb
import pyarrow as pa

from srlm.paths import SQL_DIR
from srlm.storage import Storage

CATALOG_FILE = "warehouse.duckdb"
STORAGE_RECORD = "storage.json"
TABLES_DIR = "tables"
# Statement types `srlm sql` runs; an EXPLAIN runs only when the statement it explains is one of these.
READ_ONLY_STATEMENTS = {"SELECT"}
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")

Root = str | Path | Storage  # where tables/ lives: a Storage, or a local folder or URI (default options)


class ReadOnlyViolation(ValueError):
    pass


def as_storage(root: Root) -> Storage:
    return root if isinstance(root, Storage) else Storage(str(root))


def _local_or_uri(storage: Storage, path: str) -> Path | str:
    return Path(path) if storage.is_local else path


def table_path(root: Root, key: Sequence[str]) -> Path | str:
    """The table's file: a Path on a local storage, else its URI."""
    if len(key) != 2 or not all(_IDENT.match(part) for part in key):
        raise ValueError(f"table keys are <schema>/<name> in lower snake case, got {'/'.join(key)}")
    storage = as_storage(root)
    return _local_or_uri(storage, storage.join(TABLES_DIR, key[0], f"{key[1]}.parquet"))


def write_parquet_atomic(table: pa.Table, path: str | Path, storage: Storage | None = None) -> Path | str:
    """Write a table atomically to a local path or a URI (`storage` gives a URI's fsspec options)."""
    return (storage or Storage(str(path))).write_parquet(table, path)


def list_tables(root: Root) -> dict[str, Path | str]:
    """'schema.name' -> parquet path (or URI), for every committed table file."""
    storage = as_storage(root)
    out = {}
    for file in storage.glob(storage.join(TABLES_DIR), "*/*.parquet"):
        schema, name = file.rsplit("/", 2)[-2], file.rsplit("/", 1)[-1].removesuffix(".parquet")
        if _IDENT.match(schema) and _IDENT.match(name):
            out[f"{schema}.{name}"] = _local_or_uri(storage, file)
    return out


def catalog_storage(home: str | Path) -> Storage:
    """The storage the home's catalog reads (its record), or the home itself when there is no record."""
    record = Path(home) / STORAGE_RECORD
    if not record.is_file():
        return Storage(str(home))
    data = json.loads(record.read_text())
    return Storage(data["root"], data["options"])


def _record_storage(home: Path, storage: Storage) -> None:
    text = json.dumps(storage.record(), sort_keys=True, indent=1) + "\n"
    record = home / STORAGE_RECORD
    if record.is_file() and record.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{STORAGE_RECORD}.", suffix=".tmp", dir=home)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, record)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(path: Path, read_only: bool, attempts: int = 50) -> duckdb.DuckDBPyConnection:
    """Open the catalog, retrying while another process holds its lock for a moment."""
    for attempt in range(attempts):
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def union_view_sql() -> dict[str, str]:
    """name -> the SQL body of each union view (sql/views/<name>.sql), with {tables:<name>} placeholders."""
    return {file.stem: file.read_text() for file in sorted((SQL_DIR / "views").glob("*.sql"))}


def _union_body(template: str, tables: dict[str, Path | str]) -> str | None:
    """Fill `{union:<table name>}` placeholders with a UNION ALL BY NAME over every schema holding that
    table; None when some placeholder has no table yet (the view is then not created)."""
    def expand(match: re.Match) -> str:
        wanted = match.group(1).split(",")
        parts = [f"SELECT * FROM {key}" for key in tables if key.split(".")[1] in wanted]
        if not parts:
            raise LookupError(match.group(1))
        return "(" + " UNION ALL BY NAME ".join(parts) + ")"

    try:
        return re.sub(r"\{union:([a-z_,]+)\}", expand, template)
    except LookupError:
        return None


def refresh_catalog(home: str | Path, storage: Storage | None = None) -> list[str]:
    """(Re)create every view in warehouse.duckdb over the tables of `storage` (default: the home itself),
    and record that storage beside the catalog; returns the view names."""
    home = Path(home)
    storage = storage or Storage(str(home))
    home.mkdir(parents=True, exist_ok=True)
    _record_storage(home, storage)
    tables = list_tables(storage)
    created = []
    con = _connect(home / CATALOG_FILE, read_only=False)
    try:
        storage.register(con)  # creating a view reads its file's schema
        con.execute("BEGIN")
        for key, file in tables.items():
            schema = key.split(".")[0]
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            con.execute(f"CREATE OR REPLACE VIEW {key} AS SELECT * FROM read_parquet({_sql_literal(str(file))})")
            created.append(key)
        for name, template in union_view_sql().items():
            body = _union_body(template, tables)
            if body is None:
                con.execute(f"DROP VIEW IF EXISTS main.{name}")
                continue
            con.execute(f"CREATE OR REPLACE VIEW main.{name} AS {body}")
            created.append(name)
        con.execute("COMMIT")
    finally:
        con.close()
    return created


def _parse(query: str) -> list[duckdb.Statement]:
    try:
        return duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise ReadOnlyViolation(f"cannot parse the query: {exc}") from None


def _explained_readings(explain: str) -> list[str]:
    """Every text the statement an EXPLAIN wraps may start with: after `EXPLAIN`, after `EXPLAIN ANALYZE`, and
    after a `(option, ...)` list following either. A leading `(` is ambiguous (`EXPLAIN (FORMAT json) SELECT 1`
    against `EXPLAIN (SELECT 1)`), so both readings are kept. Tokens come from DuckDB's own tokenizer, so
    comments between the keywords cannot hide anything."""
    text = explain.encode()  # the tokenizer's positions are UTF-8 byte offsets
    tokens = duckdb.tokenize(explain)
    ends = [pos for pos, _ in tokens[1:]] + [len(text)]
    spans = [(pos, end) for (pos, kind), end in zip(tokens, ends) if kind != duckdb.token_type.comment]
    words = [text[pos:end].decode().strip().upper() for pos, end in spans]
    starts = [1, 2] if words[1:2] == ["ANALYZE"] else [1]
    starts += [_after_group(words, start) for start in starts if words[start : start + 1] == ["("]]
    return [text[spans[start][0]:].decode() for start in starts if start < len(spans)]


def _after_group(words: list[str], opening: int) -> int:
    """Index of the word after the parenthesis group opened at words[opening]."""
    depth = 0
    for index in range(opening, len(words)):
        depth += {"(": 1, ")": -1}.get(words[index], 0)
        if depth == 0:
            return index + 1
    return len(words)


def _explained_kinds(explain: str) -> set[str]:
    """Statement types of every reading of an EXPLAIN's statement that parses."""
    kinds = set()
    for text in _explained_readings(explain):
        try:
            statements = duckdb.extract_statements(text)
        except duckdb.Error:
            continue  # the explained statement does not start here
        kinds.add(" + ".join(statement.type.name for statement in statements))
    return kinds


def _refusal(kind: str) -> ReadOnlyViolation:
    return ReadOnlyViolation(
        f"refused: srlm sql is read-only and this is a {kind} statement; only SELECT (and EXPLAIN of a SELECT) "
        "queries run here. The warehouse is rebuilt from the assets: change data by materializing them."
    )


def _check_statement(statement: duckdb.Statement) -> None:
    kind = statement.type.name
    if kind == "EXPLAIN":
        # EXPLAIN ANALYZE executes what it explains (a COPY ... TO writes its file): check that statement.
        kinds = _explained_kinds(statement.query)
        if not kinds or not kinds <= READ_ONLY_STATEMENTS:
            raise _refusal(f"EXPLAIN of a {' or '.join(sorted(kinds)) or 'unreadable'}")
        return
    if kind not in READ_ONLY_STATEMENTS:
        raise _refusal(kind)


def check_read_only(query: str) -> None:
    """Refuse anything but SELECT statements (every one of a `;`-separated list), by DuckDB's own parser."""
    statements = _parse(query)
    if not statements:
        raise ReadOnlyViolation("the query is empty")
    for statement in statements:
        _check_statement(statement)


def _lock_down(con: duckdb.DuckDBPyConnection, storage: Storage) -> None:
    """Second line of defence behind check_read_only: the catalog is opened read-only (no catalog writes),
    and file access is limited to the storage's tables folder, so nothing can read or install a file
    elsewhere, nor write one outside it. An object store is registered read-only (srlm/storage.py), so
    nothing is written there at all: DuckDB checks its URIs against allowed_directories like local paths."""
    storage.register(con)
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET allowed_directories = [{_sql_literal(storage.allowed_directory(storage.join(TABLES_DIR)))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def query_read_only(home: str | Path, query: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a read-only query (with `?` parameters, if any) on the home's catalog: (column names, rows).
    The storage its views read is the one recorded beside the catalog."""
    check_read_only(query)
    catalog = Path(home) / CATALOG_FILE
    if not catalog.is_file():
        raise FileNotFoundError(f"no warehouse yet at {catalog}: materialize some assets first (srlm run)")
    con = _connect(catalog, read_only=True)
    try:
        _lock_down(con, catalog_storage(home))
        cursor = con.execute(query, params)
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return columns, cursor.fetchall()
    finally:
        con.close()
