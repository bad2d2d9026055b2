"""The Parquet IO manager's files and table metadata, the warehouse resource, and the markdown preview."""

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest

from resources import ParquetIOManager, WarehouseResource
from resources.warehouse import PREVIEW_CHARS, PREVIEW_ROWS, markdown_preview
from srlm.warehouse import list_tables, query_read_only

KEY = dg.AssetKey(["data", "stub"])  # no union view reads it, so any columns do


def test_preview_is_a_markdown_table_of_the_first_rows():
    table = pa.table({"id": ["a", "b"], "score": [1.5, None]})
    assert markdown_preview(table) == "| id | score |\n|---|---|\n| a | 1.5 |\n| b | None |"


def test_preview_escapes_pipes_and_flattens_newlines():
    table = pa.table({"a|b": ["x | y\nz", "one\r\ntwo"]})
    lines = markdown_preview(table).splitlines()
    assert lines == ["| a\\|b |", "|---|", "| x \\| y z |", "| one two |"]


def test_preview_shortens_long_cells():
    cell = markdown_preview(pa.table({"text": ["w" * (PREVIEW_CHARS + 20)]})).splitlines()[2]
    assert cell == "| " + "w" * (PREVIEW_CHARS - 1) + "… |"
    exact = "w" * PREVIEW_CHARS  # at the limit: kept whole
    assert markdown_preview(pa.table({"text": [exact]})).splitlines()[2] == f"| {exact} |"


def test_preview_says_how_many_rows_it_left_out():
    lines = markdown_preview(pa.table({"n": list(range(PREVIEW_ROWS + 3))})).splitlines()
    assert lines[2:2 + PREVIEW_ROWS] == [f"| {i} |" for i in range(PREVIEW_ROWS)]
    assert lines[-1] == "_3 more rows_"
    assert "more rows" not in markdown_preview(pa.table({"n": list(range(PREVIEW_ROWS))}))


def test_preview_of_an_empty_table():
    assert markdown_preview(pa.table({"n": pa.array([], pa.int64())})) == "_empty table_"


def materialize(home, *assets) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        list(assets),
        resources={"io_manager": ParquetIOManager(home=str(home)), "warehouse": WarehouseResource(home=str(home))},
        instance=dg.DagsterInstance.ephemeral(),
    )


@dg.asset(key=KEY)
def stub_table() -> pl.DataFrame:
    return pl.DataFrame({"candidate_id": ["c1", "c2", "c3"], "n_tokens": [4, 5, 6], "text": ["a|b", "c", "d"]})


def test_handle_output_writes_parquet_refreshes_the_catalog_and_attaches_metadata(tmp_path):
    result = materialize(tmp_path, stub_table)
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    assert meta["dagster/row_count"].value == 3
    columns = [(c.name, c.type) for c in meta["dagster/column_schema"].value.columns]
    assert columns == [("candidate_id", "large_string"), ("n_tokens", "int64"), ("text", "large_string")]
    assert meta["preview"].value.splitlines()[:3] == ["| candidate_id | n_tokens | text |", "|---|---|---|", "| c1 | 4 | a\\|b |"]
    path = tmp_path / "tables" / "data" / "stub.parquet"
    assert meta["path"].value == str(path) and path.is_file()
    assert meta["sql"].value == "select * from data.stub"
    assert query_read_only(tmp_path, meta["sql"].value)[1] == [("c1", 4, "a|b"), ("c2", 5, "c"), ("c3", 6, "d")]


def test_load_input_reads_the_upstream_table(tmp_path):
    @dg.asset(ins={"stub": dg.AssetIn(KEY)}, key=["data", "longest"])
    def longest(stub: pl.DataFrame) -> pl.DataFrame:
        return stub.sort("n_tokens").tail(1)

    materialize(tmp_path, stub_table, longest)
    assert WarehouseResource(home=str(tmp_path)).read(["data", "longest"])["candidate_id"].to_list() == ["c3"]


def test_a_missing_upstream_table_is_named(tmp_path):
    @dg.asset(ins={"stub": dg.AssetIn(KEY)}, key=["data", "longest"])
    def longest(stub: pl.DataFrame) -> pl.DataFrame:
        return stub

    with pytest.raises(FileNotFoundError, match="upstream table data/stub is missing"):
        dg.materialize([longest, stub_table], selection=[longest.key],
                       resources={"io_manager": ParquetIOManager(home=str(tmp_path))}, instance=dg.DagsterInstance.ephemeral())


def test_a_table_asset_must_return_a_table(tmp_path):
    @dg.asset(key=["data", "wrong"])
    def wrong():
        return {"not": "a table"}

    with pytest.raises(TypeError, match="polars DataFrame or a pyarrow Table, got dict"):
        materialize(tmp_path, wrong)


def test_the_warehouse_resource_reads_tables_and_names_missing_ones(tmp_path):
    warehouse = WarehouseResource(home=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="table data/stub is not materialized yet"):
        warehouse.read(KEY.path)
    materialize(tmp_path, stub_table)
    assert warehouse.read(KEY.path)["n_tokens"].to_list() == [4, 5, 6]
    assert list_tables(warehouse.storage) == {"data.stub": tmp_path / "tables" / "data" / "stub.parquet"}


def test_tables_can_live_in_another_folder_than_the_home(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "storage"
    place = {"home": str(home), "storage_root": str(elsewhere)}
    dg.materialize([stub_table], resources={"io_manager": ParquetIOManager(**place)}, instance=dg.DagsterInstance.ephemeral())
    assert not (home / "tables").exists() and (home / "warehouse.duckdb").is_file()
    assert list_tables(WarehouseResource(**place).storage) == {"data.stub": elsewhere / "tables" / "data" / "stub.parquet"}
    assert query_read_only(home, "select count(*) from data.stub")[1] == [(3,)]
