"""Warehouse resource and the Parquet IO manager that every table asset goes through."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import dagster as dg
import polars as pl
import pyarrow as pa

from srlm.warehouse import list_tables, refresh_catalog, table_path, write_parquet_atomic

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


class WarehouseResource(dg.ConfigurableResource):
    """Where tables live (SRLM_HOME) and how assets read one another's tables."""

    home: str

    def path(self, key: Sequence[str]) -> Path:
        return table_path(self.home, list(key))

    def read(self, key: Sequence[str]) -> pl.DataFrame:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"table {'/'.join(key)} is not materialized yet (no {path})")
        return pl.read_parquet(path)

    def tables(self) -> dict[str, Path]:
        return list_tables(self.home)


class ParquetIOManager(dg.ConfigurableIOManager):
    """Writes each table asset to tables/<schema>/<name>.parquet atomically, refreshes the DuckDB catalog,
    and attaches the standard table metadata (row count, column schema, preview, path)."""

    home: str

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        table = _as_arrow(obj)
        path = write_parquet_atomic(table, table_path(self.home, context.asset_key.path))
        refresh_catalog(self.home)
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
        path = table_path(self.home, context.asset_key.path)
        if not path.is_file():
            raise FileNotFoundError(f"upstream table {context.asset_key.to_user_string()} is missing: {path}")
        return pl.read_parquet(path)
