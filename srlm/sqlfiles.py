"""Running the project's .sql files (sql/) with DuckDB over Arrow tables or Parquet files (local paths, or
files on a storage: srlm/storage.py's StoredFile, read where they lie through the storage's filesystem)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Mapping

import duckdb
import pyarrow as pa

from srlm.paths import SQL_DIR
from srlm.storage import StoredFile

Relation = pa.Table | str | Path | StoredFile

# Bounded memory: best-of-N over 10M candidate rows peaks near 1.2 GB with this limit (2.2 GB without;
# bench/selection_speed.py); DuckDB spills the rest to the system temp folder, never the working directory.
DUCKDB_CONFIG = {"memory_limit": "1GB", "temp_directory": str(Path(tempfile.gettempdir()) / "srlm-duckdb")}


def sql_text(name: str) -> str:
    """The text of sql/<name>.sql."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no query sql/{name}.sql")
    return path.read_text()


def sql_version(*names: str) -> str:
    """Hash of some query files: feeds the code version of the assets that run them."""
    return hashlib.sha256("\x1f".join(sql_text(n) for n in names).encode()).hexdigest()[:12]


def run_sql(name: str, relations: Mapping[str, Relation], params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run sql/<name>.sql in a fresh in-memory DuckDB where each relation (an Arrow table, a Parquet path
    or a StoredFile) is visible under its name."""
    return run_query(sql_text(name), relations, params)


def run_query(query: str, relations: Mapping[str, Relation], params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run one query like run_sql does: a fresh in-memory DuckDB (bounded memory) over the relations."""
    con = duckdb.connect(config=DUCKDB_CONFIG)
    try:
        for rel_name, source in relations.items():
            if isinstance(source, pa.Table):
                con.register(rel_name, source)
            elif isinstance(source, StoredFile):
                source.storage.register(con)
                con.read_parquet(source.path).create_view(rel_name)
            else:
                con.read_parquet(str(source)).create_view(rel_name)
        return con.sql(query, params=dict(params) if params else None).to_arrow_table()
    finally:
        con.close()
