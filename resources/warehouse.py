"""Warehouse resource and the Parquet IO manager that every table asset goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import dagster as dg
import polars as pl
import pyarrow as pa
from pydantic import PrivateAttr

from srlm.run_lock import RunLock, acquire, held_by_this_process
from srlm.storage import Storage, StoredFile
from srlm.warehouse import refresh_catalog, table_path, write_parquet_atomic

PREVIEW_ROWS = 5
PREVIEW_CHARS = 80


def _as_arrow(obj: object) -> pa.Table:
    if isinstance(obj, pl.DataFrame):
        return obj.to_arrow()
    if isinstance(obj, pa.Table):
        return obj
    raise TypeError(f"table assets return a polars DataFrame or a pyarrow Table, got {type(obj).__name__}")


def table_schema(table: pa.Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in table.schema])


def _cell(value: object) -> str:
    """One markdown table cell: on one line, pipes escaped, long text shortened."""
    text = " ".join(str(value).splitlines()).replace("|", "\\|")
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def markdown_preview(table: pa.Table, rows: int = PREVIEW_ROWS) -> str:
    """The first rows as a markdown table, long text shortened, so the UI shows what the table holds."""
    if table.num_rows == 0:
        return "_empty table_"
    header = "| " + " | ".join(_cell(name) for name in table.column_names) + " |"
    rule = "|" + "---|" * table.num_columns
    body = ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in table.slice(0, rows).to_pylist()]
    more = [f"\n_{table.num_rows - rows} more rows_"] if table.num_rows > rows else []
    return "\n".join([header, rule, *body, *more])


class _Located:
    """The storage of a resource with the fields home, storage_root and storage_options."""

    @property
    def storage(self) -> Storage:
        return Storage(self.storage_root or self.home, self.storage_options)


class WarehouseResource(dg.ConfigurableResource, _Located):
    """Where tables live (the storage: SRLM_HOME unless paths.storage) and how assets read one another's tables."""

    home: str
    storage_root: Optional[str] = None  # paths.storage: a local folder or a URI; None = the home
    storage_options: dict[str, Any] = {}

    def path(self, key: Sequence[str]) -> Path | str:
        return table_path(self.storage, list(key))

    def exists(self, key: Sequence[str]) -> bool:
        return self.storage.is_file(self.path(key))

    def stamp(self, key: Sequence[str]) -> str:
        """Changes whenever the table is rewritten."""
        return self.storage.stamp(self.path(key))

    def source(self, key: Sequence[str]) -> StoredFile:
        """The table's file for a DuckDB query (srlm/sqlfiles.py), read where it lies."""
        return self.storage.file(self.path(key))

    def read(self, key: Sequence[str], columns: list[str] | None = None) -> pl.DataFrame:
        path = self.path(key)
        if not self.storage.is_file(path):
            raise FileNotFoundError(f"table {'/'.join(key)} is not materialized yet (no {path})")
        return pl.from_arrow(self.storage.read_parquet(path, columns))


class ParquetIOManager(dg.ConfigurableIOManager, _Located):
    """Writes each table asset to <storage>/tables/<schema>/<name>.parquet atomically, refreshes the DuckDB
    catalog in the home, and attaches the standard table metadata (row count, column schema, preview, path).

    Every run goes through it, so it also takes the home's run lock (srlm/run_lock.py) before the first step:
    a run launched from the UI while another is active fails at once, naming the active run."""

    home: str
    storage_root: Optional[str] = None  # paths.storage: a local folder or a URI; None = the home
    storage_options: dict[str, Any] = {}
    _lock: Optional[RunLock] = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        folder = context.instance.root_directory if context.instance is not None else None
        if folder and not held_by_this_process(folder):  # `srlm run` holds it already for its runs
            self._lock = acquire(folder, f"Dagster run {context.run_id}")
            self._lock.note(run_id=context.run_id)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        table = _as_arrow(obj)
        storage = self.storage
        path = write_parquet_atomic(table, table_path(storage, context.asset_key.path), storage)
        refresh_catalog(self.home, storage)
        context.add_output_metadata(
            {
                "dagster/row_count": table.num_rows,
                "dagster/column_schema": table_schema(table),
                "preview": dg.MetadataValue.md(markdown_preview(table)),
                "path": dg.MetadataValue.path(str(path)),
                "sql": dg.MetadataValue.text(f"select * from {'.'.join(context.asset_key.path)}"),
            }
        )

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        storage = self.storage
        path = table_path(storage, context.asset_key.path)
        if not storage.is_file(path):
            raise FileNotFoundError(f"upstream table {context.asset_key.to_user_string()} is missing: {path}")
        return pl.from_arrow(storage.read_parquet(path))
