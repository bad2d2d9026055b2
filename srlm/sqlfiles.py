"""Running the project's .sql files (sql/) with DuckDB over Arrow tables or Parquet files."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import duckdb
import pyarrow as pa

from srlm.paths import SQL_DIR


def sql_text(name: str) -> str:
    """The text of sql/<name>.sql."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no query sql/{name}.sql")
    return path.read_text()


def sql_version(*names: str) -> str:
    """Hash of some query files: feeds the code version of the assets that run them."""
    return hashlib.sha256("\x1f".join(sql_text(n) for n in names).encode()).hexdigest()[:12]


def run_sql(name: str, relations: Mapping[str, pa.Table | str | Path], params: Mapping[str, Any] | None = None) -> pa.Table:
    """Run sql/<name>.sql in a fresh in-memory DuckDB where each relation (Arrow table or Parquet path)
    is visible under its name."""
    con = duckdb.connect()
    try:
        for rel_name, source in relations.items():
            if isinstance(source, pa.Table):
                con.register(rel_name, source)
            else:
                con.read_parquet(str(source)).create_view(rel_name)
        return con.sql(sql_text(name), params=dict(params) if params else None).to_arrow_table()
    finally:
        con.close()
