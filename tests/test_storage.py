"""Tables, shards and checkpoints on an object store (srlm/storage.py), against a local S3 server: moto's
ThreadedMotoServer on 127.0.0.1, started here. Atomic writes, the catalog and `srlm sql` over S3 tables
with the read-only refusals, checkpoints committed with a marker, and one micro experiment end to end."""

import errno
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
import uuid

import dagster as dg
import duckdb
import fsspec
import polars as pl
import pyarrow as pa
import pytest
import s3fs
import yaml
from conftest import FakeEngine, write_micro_config
from moto.server import ThreadedMotoServer
from test_warehouse import candidates

from resources import ParquetIOManager, WarehouseResource
from srlm import checkpoints, storage as storage_module
from srlm.checkpoints import cache_dir, commit_checkpoint, commit_dir, leftovers, local_checkpoint
from srlm.cli import main
from srlm.config import ConfigError, load_config
from srlm.engines.types import SamplingParams
from srlm.expansion import ExpansionSettings, ExpansionTask, expand
from srlm.storage import MARKER, NotCommitted, ReadOnlyFileSystem, Storage
from srlm.warehouse import ReadOnlyViolation, list_tables, query_read_only, refresh_catalog, table_path, write_parquet_atomic

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AWS_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="module")
def endpoint():
    """A local S3 server for this module; the fake credentials stay in the environment while it runs
    (subprocesses inherit them, as they would real ones)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the server's request log
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_ENV.items():
            env.setenv(name, value)
        for name in AWS_UNSET:  # a developer's own AWS settings must not reach past the local server
            env.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


@pytest.fixture
def bucket(endpoint):
    name = f"srlm-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(name)
    return name


@pytest.fixture
def s3(bucket, endpoint) -> Storage:
    return Storage(f"s3://{bucket}/experiments/one", {"endpoint_url": endpoint})


def objects(store: Storage, under: str = "") -> list[str]:
    """Every object under the storage root (relative names)."""
    return sorted(p.split("/experiments/one/", 1)[1] for p in store.fs.find(store.join(under) if under else store.root))


# ----------------------------------------------------------------------------------------------- Parquet files


def test_a_table_round_trips_and_is_listed(s3):
    table = pa.table({"a": [1, 2, 3], "text": ["x", None, "z"]})
    path = table_path(s3, ("iter_1", "candidates"))
    assert path == s3.root + "/tables/iter_1/candidates.parquet"
    assert not s3.is_file(path)
    assert write_parquet_atomic(table, path, s3) == path
    assert s3.is_file(path) and s3.read_parquet(path).equals(table)
    assert s3.read_parquet(path, columns=["text"]).column_names == ["text"]
    assert list_tables(s3) == {"iter_1.candidates": path}


def test_a_failing_writer_leaves_no_object_and_keeps_the_old_one(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module.tempfile, "tempdir", str(tmp_path))  # to see the local temp file go too
    old, new = table_path(s3, ("data", "kept")), table_path(s3, ("data", "never"))
    s3.write_parquet(pa.table({"a": [1]}), old)
    stamp = s3.stamp(old)

    def crash(table, where, **kw):
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(storage_module.pq, "write_table", crash)
    for path in (old, new):
        with pytest.raises(KeyboardInterrupt):
            s3.write_parquet(pa.table({"a": [2, 3]}), path)
    monkeypatch.undo()
    assert objects(s3) == ["tables/data/kept.parquet"]
    assert s3.read_parquet(old).column("a").to_pylist() == [1] and s3.stamp(old) == stamp
    assert list(tmp_path.iterdir()) == []


def test_the_stamp_changes_when_a_table_is_rewritten(s3):
    path = table_path(s3, ("data", "t"))
    s3.write_parquet(pa.table({"a": [1]}), path)
    first = s3.stamp(path)
    s3.write_parquet(pa.table({"a": [2]}), path)
    assert s3.stamp(path) != first


def test_the_read_only_view_reads_byte_for_byte():
    """Reads inside the cached tail, before it, and across its start return the file's bytes."""
    inner = fsspec.filesystem("memory")
    data = os.urandom(storage_module.TAIL_BYTES * 3 + 123)
    inner.pipe_file("/t/blob.bin", data)
    reader = ReadOnlyFileSystem(inner)
    handle = reader.open("memory:///t/blob.bin")
    size = len(data)
    for offset, n in [(size - 8, 8), (0, 100), (size - storage_module.TAIL_BYTES - 10, 50), (size - 5, 100), (size, 10), (7, -1)]:
        handle.seek(offset)
        assert handle.read(n) == data[offset : offset + n if n >= 0 else None]
        assert handle.tell() == min(size, offset + n if n >= 0 else size)
    assert handle.seek(-4, os.SEEK_END) == size - 4 and handle.read(4) == data[-4:]
    with pytest.raises(PermissionError, match="read-only"):
        reader.open("memory:///t/new.bin", "wb")


# ----------------------------------------------------------------------------------------------- the catalog


@pytest.fixture
def warehouse(s3, tmp_path):
    """A home whose catalog reads tables on S3; a file outside tables/ and a local secret beside them."""
    home = tmp_path / "home"
    put = lambda key, table: s3.write_parquet(table, table_path(s3, key))
    put(("data", "instructions"), pa.table({"example_id": ["e1", "e2"], "instruction": ["x", "y"]}))
    put(("iter_1", "candidates"), candidates(1, [("c1", "e1", "e1", "M0-a", "r1"), ("c2", "e2", "e2", "M0-a", "r2")]))
    put(("iter_2", "candidates"), candidates(2, [("c3", "e1", "c1", "M1-b", "r1 longer")]))
    s3.write_parquet(pa.table({"secret": [42]}), s3.join("private", "secret.parquet"))
    refresh_catalog(home, s3)
    return home


def test_the_catalog_reads_s3_tables_and_records_where_they_are(warehouse, s3):
    assert not (warehouse / "tables").exists()
    assert json.loads((warehouse / "storage.json").read_text()) == {"root": s3.root, "options": s3.options}
    assert query_read_only(warehouse, "select count(*) from data.instructions")[1] == [(2,)]
    _, rows = query_read_only(warehouse, "select iteration, count(*) from candidates group by 1 order by 1")
    assert rows == [(1, 2), (2, 1)]


def test_srlm_sql_answers_from_s3_tables(warehouse, monkeypatch, capsys):
    monkeypatch.setenv("SRLM_HOME", str(warehouse))
    assert main(["sql", "select candidate_id from iter_2.candidates", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"candidate_id": "c3"}]
    assert main(["sql", "copy (select 1) to 'x.csv'"]) == 2
    assert "read-only" in capsys.readouterr().err


def test_srlm_report_reads_s3_tables(warehouse, monkeypatch, capsys):
    monkeypatch.setenv("SRLM_HOME", str(warehouse))
    assert main(["report"]) == 0
    assert "Warehouse:" in (warehouse / "report" / "index.html").read_text()


@pytest.mark.parametrize("query", ["drop view candidates", "install httpfs", "explain analyze copy (select 42) to 'out.csv'"])
def test_writes_are_refused_over_s3_tables(warehouse, query):
    with pytest.raises(ReadOnlyViolation, match="read-only"):
        query_read_only(warehouse, query)


@pytest.fixture
def unchecked(monkeypatch):
    """Bypass the statement check, to test the connection's own defences."""
    monkeypatch.setattr("srlm.warehouse.check_read_only", lambda query: None)


def test_the_connection_reads_only_the_storage_tables(warehouse, s3, tmp_path, unchecked):
    table = table_path(s3, ("data", "instructions"))
    assert query_read_only(warehouse, f"select count(*) from read_parquet('{table}')")[1] == [(2,)]
    local = tmp_path / "local.csv"
    local.write_text("a\n1\n")
    for outside in (s3.join("private", "secret.parquet"), s3.join("tables", "..", "private", "secret.parquet"), str(local)):
        with pytest.raises(duckdb.Error, match="file system operations are disabled"):
            query_read_only(warehouse, f"select * from read_parquet('{outside}')")


def test_the_connection_writes_nothing_even_inside_the_tables(warehouse, s3, unchecked):
    inside = s3.join("tables", "data", "planted.csv")
    with pytest.raises(duckdb.Error, match="read-only"):
        query_read_only(warehouse, f"copy (select 42) to '{inside}'")
    with pytest.raises(duckdb.Error, match="file system operations are disabled"):
        query_read_only(warehouse, f"copy (select 42) to '{s3.join('private', 'planted.csv')}'")
    with pytest.raises(duckdb.Error, match="configuration has been locked"):
        query_read_only(warehouse, "set enable_external_access = true")
    assert "tables/data/planted.csv" not in objects(s3) and "private/planted.csv" not in objects(s3)


def test_the_io_manager_writes_and_reads_tables_on_s3(s3, tmp_path):
    home = tmp_path / "home"
    place = {"home": str(home), "storage_root": s3.root, "storage_options": s3.options}

    @dg.asset(key=["data", "stub"])
    def stub() -> pl.DataFrame:
        return pl.DataFrame({"n": [1, 2]})

    @dg.asset(key=["data", "double"], ins={"stub": dg.AssetIn(["data", "stub"])})
    def double(stub: pl.DataFrame) -> pl.DataFrame:
        return stub.with_columns(pl.col("n") * 2)

    result = dg.materialize([stub, double], resources={"io_manager": ParquetIOManager(**place)}, instance=dg.DagsterInstance.ephemeral())
    paths = [e.materialization.metadata["path"].value for e in result.get_asset_materialization_events()]
    assert paths == [s3.join("tables", "data", "stub.parquet"), s3.join("tables", "data", "double.parquet")]
    warehouse = WarehouseResource(**place)
    assert warehouse.read(["data", "double"])["n"].to_list() == [2, 4] and warehouse.exists(["data", "stub"])
    assert query_read_only(home, "select sum(n) from data.double")[1] == [(6,)]
    assert not (home / "tables").exists()


# ----------------------------------------------------------------------------------------------- checkpoints


def adapter_folder(folder: pathlib.Path) -> pathlib.Path:
    (folder / "nested").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(2048))
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "nested" / "events.out").write_bytes(b"log")
    return folder


def files_of(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_is_committed_marker_last_and_fetched_elsewhere(s3, tmp_path):
    home, other_home = tmp_path / "home", tmp_path / "other"
    staging = adapter_folder(home / "checkpoints" / "iter_1" / "run-1")
    content = files_of(staging)
    path = commit_checkpoint(staging, s3, home, "iter_1", "M1-abc")
    assert path == s3.join("checkpoints", "iter_1", "M1-abc") and s3.is_committed(path)
    assert f"checkpoints/iter_1/M1-abc/{MARKER}" in objects(s3, "checkpoints")
    assert not staging.exists() and files_of(cache_dir(home, path)) == content  # this machine's copy
    fetched = local_checkpoint(path, s3, other_home)
    assert fetched == str(other_home / "checkpoints" / "iter_1" / "M1-abc") and files_of(pathlib.Path(fetched)) == content
    assert [p.name for p in (other_home / "checkpoints" / "iter_1").iterdir()] == ["M1-abc"]  # no temp folder left


def test_the_commit_writes_the_marker_after_every_file(s3, tmp_path, monkeypatch):
    order = []
    real_put, real_pipe = s3.fs.put_file, s3.fs.pipe_file
    monkeypatch.setattr(s3.fs, "put_file", lambda lpath, rpath, **kw: (order.append(rpath), real_put(lpath, rpath, **kw))[1])
    monkeypatch.setattr(s3.fs, "pipe_file", lambda path, data, **kw: (order.append(path), real_pipe(path, data, **kw))[1])
    commit_checkpoint(adapter_folder(tmp_path / "run-1"), s3, tmp_path / "home", "sft", "sft-1")
    assert len(order) == 4 and order[-1].endswith(MARKER)


def test_a_folder_without_its_marker_is_not_read(s3, tmp_path):
    path = s3.join("checkpoints", "iter_1", "M1-cut")
    s3.fs.pipe_file(f"{path}/adapter_config.json", b'{"r": 8}')  # an upload cut off before its marker
    assert not s3.is_committed(path)
    with pytest.raises(NotCommitted, match="not committed"):
        local_checkpoint(path, s3, tmp_path / "home")
    assert not (tmp_path / "home" / "checkpoints" / "iter_1" / "M1-cut").exists()


def test_a_fetch_that_does_not_match_the_marker_leaves_nothing(s3, tmp_path):
    path = commit_checkpoint(adapter_folder(tmp_path / "run-1"), s3, tmp_path / "home", "iter_1", "M1-abc")
    s3.fs.pipe_file(f"{path}/adapter_config.json", b"{}")  # changed behind the marker's back
    with pytest.raises(OSError, match="the marker says"):
        local_checkpoint(path, s3, tmp_path / "other")
    assert list((tmp_path / "other" / "checkpoints" / "iter_1").iterdir()) == []


def test_identical_content_already_committed_is_kept(s3, tmp_path, monkeypatch):
    path = commit_checkpoint(adapter_folder(tmp_path / "a" / "run-1"), s3, tmp_path / "a", "iter_1", "M1-abc")
    monkeypatch.setattr(s3.fs, "put_file", lambda *a, **kw: pytest.fail("uploaded again"))
    assert commit_checkpoint(adapter_folder(tmp_path / "b" / "run-2"), s3, tmp_path / "b", "iter_1", "M1-abc") == path


def test_a_local_path_is_used_where_it_is(tmp_path, s3):
    assert local_checkpoint(str(tmp_path / "M1-abc"), s3, tmp_path / "home") == str(tmp_path / "M1-abc")


def test_a_local_storage_on_another_filesystem_gets_a_copy_renamed_into_place(tmp_path, monkeypatch):
    staging, final = adapter_folder(tmp_path / "home" / "run-1"), tmp_path / "storage" / "checkpoints" / "sft" / "sft-1"
    content = files_of(staging)
    real_rename = pathlib.Path.rename

    def rename(src, dst):
        if src == staging:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    assert commit_dir(staging, final) == final and files_of(final) == content
    assert not staging.exists() and [p.name for p in final.parent.iterdir()] == ["sft-1"]


def test_leftovers_in_a_local_storage_folder_are_found_too(tmp_path):
    home, elsewhere = tmp_path / "home", tmp_path / "storage"
    half = elsewhere / "tables" / "data" / ".x.parquet.k2j3.tmp"
    half.parent.mkdir(parents=True)
    half.write_bytes(b"half")
    (elsewhere / "tables" / "data" / "x.parquet").write_bytes(b"kept")
    assert leftovers(home) == [] and leftovers(home, Storage(str(elsewhere))) == [half]
    checkpoints.remove_leftovers(home, Storage(str(elsewhere)))
    assert not half.exists() and (elsewhere / "tables" / "data" / "x.parquet").exists()


# ----------------------------------------------------------------------------------------------- shards


def test_shards_on_s3_are_committed_and_reused(s3):
    tasks = [ExpansionTask(f"ex{i}", f"p{i}", "2 + 2?", "", "", "4") for i in range(5)]
    settings = ExpansionSettings(1, "M0-a", SamplingParams(n=2, seed=3), shard_size=2)
    shard_dir = s3.join("shards", "iter_1", "candidates", "recipe")
    table, counts = expand(tasks, FakeEngine(), settings, shard_dir, "run-1", storage=s3)
    assert counts == {"shards": 3, "reused": 0, "generated": 3} and table.num_rows == 10
    assert objects(s3) == [f"shards/iter_1/candidates/recipe/shard-0000{i}.parquet" for i in range(3)]
    rerun = FakeEngine()
    again, counts = expand(tasks, rerun, settings, shard_dir, "run-2", storage=s3)
    assert counts == {"shards": 3, "reused": 3, "generated": 0} and again.equals(table)
    assert rerun.generate_calls == []  # every shard was read back, none generated


# ----------------------------------------------------------------------------------------------- config


def config_with(tmp_path, paths: dict):
    config, home = write_micro_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["paths"].update(paths)
    config.write_text(yaml.safe_dump(data))
    return config


def test_the_config_takes_a_storage_uri_and_its_options(tmp_path, endpoint):
    cfg = load_config(config_with(tmp_path, {"storage": "s3://bucket/prefix/", "storage_options": {"endpoint_url": endpoint}}))
    assert cfg.paths.open_storage() == Storage("s3://bucket/prefix", {"endpoint_url": endpoint})
    local = load_config(config_with(tmp_path, {"storage": "shared"}))
    assert local.paths.storage == str(tmp_path / "shared")
    assert load_config(config_with(tmp_path, {})).paths.open_storage() == Storage(str(tmp_path / "home"))


@pytest.mark.parametrize(
    "paths, message",
    [
        ({"storage_options": {"client_kwargs": {"aws_secret_access_key": "x"}}}, "holds credentials"),
        ({"storage_options": {"key": "AKIA", "secret": "x"}}, "never from the config"),
        ({"storage": "nosuchfs://bucket"}, "paths.storage: no filesystem for nosuchfs://"),
        ({"storage": "s3://"}, "names no bucket"),
        ({"home": "s3://bucket/home"}, "paths.home: is a local folder"),
    ],
)
def test_bad_storage_settings_are_explained(tmp_path, paths, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_with(tmp_path, paths))


# ----------------------------------------------------------------------------------------------- end to end


def srlm(config: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SRLM_CONFIG", "SRLM_HOME", "DAGSTER_HOME")}
    return subprocess.run([sys.executable, "-m", "srlm.cli", *args, "--config", str(config)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_micro_experiment_runs_with_its_tables_on_s3(tmp_path, s3):
    config = config_with(tmp_path, {"storage": s3.root, "storage_options": s3.options})
    home = tmp_path / "home"
    started = time.monotonic()
    proc = srlm(config, "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"micro experiment on S3: {time.monotonic() - started:.0f} s")
    assert "succeeded" in proc.stdout and f"tables, shards and checkpoints in {s3.root}" in proc.stdout
    assert not any((home / sub).exists() for sub in ("tables", "shards"))
    stored = objects(s3)
    assert "tables/eval/comparison.parquet" in stored and any(p.startswith("shards/srlm_iter_1/candidates/") for p in stored)

    _, rows = query_read_only(home, "select checkpoint_id, path from checkpoints where iteration >= 0")  # not the base model
    assert rows and all(path == s3.join("checkpoints", path.rsplit("/", 2)[1], ckpt) for ckpt, path in rows)
    assert all(s3.is_committed(path) and cache_dir(home, path).is_dir() for _, path in rows)
    answer = srlm(config, "sql", "select count(*) as n from candidates", "--format", "json")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)[0]["n"] == s3.read_parquet(table_path(s3, ("srlm_iter_1", "candidates"))).num_rows > 0

    assert srlm(config, "report").returncode == 0 and (home / "report" / "index.html").is_file()

    again = srlm(config, "run")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "nothing to do" in again.stdout and objects(s3) == stored
