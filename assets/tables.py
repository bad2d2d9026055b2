"""What every table asset shares: keys, typed frames (srlm/schemas.py), content fingerprints as data
versions, code versions."""


import hashlib
import io
import warnings
from typing import Any, Mapping, Sequence

import dagster as dg
import polars as pl
import pyarrow as pa

from srlm.arms import Stage
from srlm.schemas import Table, frame

# Output(data_version=...) is marked beta; it is what makes checkpoints record the data they trained on
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*data_version.*")


__all__ = ["asset_key", "code_version", "fingerprint", "frame", "table_key", "table_output"]


def asset_key(parts: Sequence[str]) -> dg.AssetKey:
    """The Dagster key of a table named by srlm/registry.py or srlm/schemas.py (`(schema, name)`)."""
    return dg.AssetKey(list(parts))


def fingerprint(df: pl.DataFrame) -> str:
    """Content hash of a table (Arrow IPC bytes): the data version downstream assets record."""
    sink = io.BytesIO()
    table: pa.Table = df.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def table_output(df: pl.DataFrame, metadata: Mapping[str, Any] | None = None, output_name: str = "result") -> dg.Output:
    """An asset result whose data version is its content fingerprint (the `trained_on` of checkpoints)."""
    version = fingerprint(df)
    return dg.Output(
        df,
        output_name=output_name,
        metadata={**(metadata or {}), "data_version": version},
        data_version=dg.DataVersion(version),
    )


def code_version(*parts: str) -> str:
    """An asset's code version from the recipe parts it depends on (config hashes, template and SQL versions)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12]


def table_key(table: Table, stage: Stage) -> dg.AssetKey:
    """The key of one of a stage's tables (srlm/schemas.py describes each)."""
    return asset_key(table.key(stage))
