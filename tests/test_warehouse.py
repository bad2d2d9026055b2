"""Parquet tables written atomically, the DuckDB catalog of views, and read-only SQL."""

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srlm import storage, warehouse
from srlm.storage import Storage
from srlm.warehouse import ReadOnlyViolation, query_read_only, refresh_catalog, table_path, write_parquet_atomic


def put(home, key, table):
    write_parquet_atomic(table, table_path(home, key))


def candidates(iteration, rows):
    """rows: (candidate_id, example_id, parent_id, checkpoint_id, text)"""
    return pa.table(
        {
            "candidate_id": [r[0] for r in rows],
            "arm": ["srlm/likelihood"] * len(rows),
            "example_id": [r[1] for r in rows],
            "iteration": [iteration] * len(rows),
            "parent_id": [r[2] for r in rows],
            "checkpoint_id": [r[3] for r in rows],
            "text": [r[4] for r in rows],
        }
    )


@pytest.fixture
def home(tmp_path):
    put(tmp_path, ("data", "instructions"), pa.table({"example_id": ["e1", "e2"], "instruction": ["x", "y"]}))
    put(tmp_path, ("iter_1", "candidates"), candidates(1, [("c1", "e1", "e1", "M0-a", "r1"), ("c2", "e2", "e2", "M0-a", "r2")]))
    put(tmp_path, ("iter_2", "candidates"), candidates(2, [("c3", "e1", "c1", "M1-b", "r1 longer")]))
    refresh_catalog(tmp_path)
    return tmp_path


def test_table_keys_are_validated(tmp_path):
    assert table_path(tmp_path, ["iter_2", "candidates"]) == tmp_path / "tables" / "iter_2" / "candidates.parquet"
    with pytest.raises(ValueError):
        table_path(tmp_path, ["a", "b", "c"])
    with pytest.raises(ValueError):
        table_path(tmp_path, ["iter-2", "x; drop"])


def test_a_crash_mid_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "t" / "x.parquet"
    write_parquet_atomic(pa.table({"a": [1]}), path)

    def crash(table, where, **kw):
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(storage.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        write_parquet_atomic(pa.table({"a": [2, 3]}), path)
    monkeypatch.undo()
    assert pq.read_table(path).column("a").to_pylist() == [1]
    assert [p.name for p in path.parent.iterdir()] == ["x.parquet"]  # no temp file left behind


def test_views_per_table_named_by_key(home):
    _, rows = query_read_only(home, "select count(*) from data.instructions")
    assert rows == [(2,)]
    _, rows = query_read_only(home, "select text from iter_2.candidates")
    assert rows == [("r1 longer",)]


def test_union_view_across_iterations(home):
    _, rows = query_read_only(home, "select iteration, count(*) from candidates group by 1 order by 1")
    assert rows == [(1, 2), (2, 1)]


def test_union_views_without_tables_are_not_created(home):
    with pytest.raises(Exception, match="selected"):
        query_read_only(home, "select * from selected")


def test_ancestry_walks_back_to_the_original_example(home):
    cols, rows = query_read_only(home, "select depth, ancestor_id, iteration, is_original from ancestry where candidate_id = 'c3' order by depth")
    assert rows == [(0, "c3", 2, False), (1, "c1", 1, False), (2, "e1", None, True)]


def test_selector_choices_union_view_spans_iterations_apart_from_selected(home):
    def choices(iteration, selectors):
        n = len(selectors)
        return pa.table({"example_id": ["e1"] * n, "iteration": [iteration] * n, "candidate_id": [f"c{iteration}"] * n, "selector": selectors})

    put(home, ("iter_1", "selector_choices"), choices(1, ["length", "likelihood", "consistency"]))
    put(home, ("iter_2", "selector_choices"), choices(2, ["length"]))
    put(home, ("iter_1", "selected"), choices(1, ["likelihood"]))
    refresh_catalog(home)
    _, rows = query_read_only(home, "select iteration, count(*) from selector_choices group by 1 order by 1")
    assert rows == [(1, 3), (2, 1)]


def test_refresh_picks_up_new_tables(home):
    put(home, ("iter_3", "candidates"), candidates(3, [("c4", "e1", "c3", "M2-c", "r1 longest")]))
    refresh_catalog(home)
    _, rows = query_read_only(home, "select max(depth) from ancestry where candidate_id = 'c4'")
    assert rows == [(3,)]


@pytest.mark.parametrize(
    "query, kind",
    [
        ("insert into data.instructions values ('e3', 'z')", "INSERT"),
        ("create table t as select 1", "CREATE"),
        ("copy (select 1) to 'out.csv'", "COPY"),
        ("attach 'other.duckdb'", "ATTACH"),
        ("drop view candidates", "DROP"),
        ("select 1; delete from data.instructions", "DELETE"),
        ("set threads = 1", "SET"),
        ("select 1 /* ; */; -- comment\n update data.instructions set instruction = 'z'", "UPDATE"),
        ("pragma enable_profiling", "PRAGMA"),
        ("install httpfs", "LOAD"),
        ("load httpfs", "LOAD"),
        ("export database 'dump'", "EXPORT"),
        ("call checkpoint()", "CALL"),
        ("create macro m() as 1", "CREATE"),
        ("explain analyze copy (select 42) to 'out.csv'", "EXPLAIN of a COPY"),
        ("EXPLAIN /* ; */ ANALYZE -- é\n (FORMAT json) COPY (select 42) TO 'out.csv'", "EXPLAIN of a COPY"),
        ("explain (analyze) insert into data.instructions values ('e3', 'z')", "EXPLAIN of a INSERT"),
        ("explain copy (select 42) to 'out.csv'", "EXPLAIN of a COPY"),
    ],
)
def test_writes_and_ddl_are_refused(home, query, kind):
    with pytest.raises(ReadOnlyViolation, match=f"read-only and this is a {kind} statement"):
        query_read_only(home, query)


def test_explain_analyze_cannot_write_a_file(home, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "x.csv"
    with pytest.raises(ReadOnlyViolation, match="EXPLAIN of a COPY"):
        query_read_only(home, f"EXPLAIN ANALYZE COPY (select 42) TO '{out}'")
    assert not out.exists()


@pytest.mark.parametrize(
    "query",
    [
        "explain select * from candidates",
        "explain analyze select * from candidates",
        "explain (analyze, format json) (select 1) union (select 2)",
        "explain analyze /* é */ (format json) select 'ü'",
        "select 1; select count(*) from candidates -- ; drop view candidates",
        "describe candidates",
        "from candidates",
    ],
)
def test_read_only_queries_run(home, query):
    cols, rows = query_read_only(home, query)
    assert rows


@pytest.fixture
def unchecked(monkeypatch):
    """Bypass the statement check, to test the connection's own defences."""
    monkeypatch.setattr(warehouse, "check_read_only", lambda query: None)


@pytest.mark.parametrize(
    "query, error",
    [
        ("copy (select 42) to '{out}'", "file system operations are disabled"),
        ("create table data.t as select 1", "read-only"),
        ("set enable_external_access = true", "configuration has been locked"),
    ],
)
def test_the_connection_refuses_writes_without_the_check(home, tmp_path_factory, unchecked, query, error):
    out = tmp_path_factory.mktemp("out") / "x.csv"
    with pytest.raises(duckdb.Error, match=error):
        query_read_only(home, query.format(out=out))
    assert not out.exists()


def test_the_connection_reads_no_file_outside_the_tables(home, tmp_path_factory, unchecked):
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(duckdb.Error, match="file system operations are disabled"):
        query_read_only(home, f"select * from read_csv('{secret}')")


def test_with_tables_in_another_folder_only_those_are_readable(tmp_path, unchecked):
    home, elsewhere = tmp_path / "home", Storage(str(tmp_path / "storage"))
    put(elsewhere, ("data", "t"), pa.table({"a": [1]}))
    put(home, ("data", "old"), pa.table({"a": [2]}))  # the home's own tables/ is not where the catalog reads
    refresh_catalog(home, elsewhere)
    assert query_read_only(home, "select a from data.t")[1] == [(1,)]
    with pytest.raises(duckdb.Error, match="file system operations are disabled"):
        query_read_only(home, f"select * from read_parquet('{table_path(home, ('data', 'old'))}')")


def test_a_catalog_without_a_storage_record_reads_the_home(home):
    (home / warehouse.STORAGE_RECORD).unlink()  # a home from before the record
    assert query_read_only(home, "select count(*) from data.instructions")[1] == [(2,)]


def test_no_warehouse_yet(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize some assets first"):
        query_read_only(tmp_path, "select 1")
