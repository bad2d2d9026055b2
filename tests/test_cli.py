"""The srlm command: sql output formats and refusals (run and ui are covered end to end)."""

import json
import re

import pyarrow as pa
import pytest

from srlm.cli import format_table, main
from srlm.warehouse import refresh_catalog, table_path, write_parquet_atomic


@pytest.fixture
def home(tmp_path, monkeypatch):
    table = pa.table({"candidate_id": ["a", "b"], "score": [1.5, float("-inf")], "text": ["short", "line\nbreak"]})
    write_parquet_atomic(table, table_path(tmp_path, ("iter_1", "scores")))
    refresh_catalog(tmp_path)
    monkeypatch.setenv("SRLM_HOME", str(tmp_path))
    monkeypatch.delenv("SRLM_CONFIG", raising=False)
    return tmp_path


def test_sql_table_format(home, capsys):
    assert main(["sql", "select * from iter_1.scores order by candidate_id"]) == 0
    out = capsys.readouterr().out
    assert "candidate_id | score | text" in out
    assert "-inf" in out and "line\\nbreak" in out and "(2 rows)" in out


def test_sql_csv_format(home, capsys):
    assert main(["sql", "select candidate_id, score from iter_1.scores order by 1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["candidate_id,score", "a,1.5", "b,-inf"]


def test_sql_json_format(home, capsys):
    assert main(["sql", "select candidate_id, score from iter_1.scores order by 1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"candidate_id": "a", "score": 1.5}, {"candidate_id": "b", "score": "-inf"}]


def test_sql_refuses_writes(home, capsys):
    assert main(["sql", "delete from iter_1.scores"]) == 2
    assert "read-only" in capsys.readouterr().err


def test_sql_refuses_explain_analyze_of_a_write(home, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out") / "x.csv"
    assert main(["sql", f"EXPLAIN ANALYZE COPY (select 42) TO '{out}'"]) == 2
    assert "EXPLAIN of a COPY statement" in capsys.readouterr().err
    assert not out.exists()


def test_sql_reports_query_errors(home, capsys):
    assert main(["sql", "select * from nothing_here"]) == 1
    assert "query failed" in capsys.readouterr().err


def test_run_with_a_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: {iteratons: 2}\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "did you mean 'iterations'" in capsys.readouterr().err


def test_format_table_clips_long_cells():
    text = format_table(["t"], [("x" * 100,)], max_width=10)
    assert "xxxxxxxxx…" in text


def test_selecting_one_output_of_a_multi_asset_selects_the_whole_step(micro_config):
    """data/instructions and data/instructions_rejected are written by one step: selecting one runs both."""
    import dagster as dg

    from definitions import build_definitions
    from srlm.cli import whole_multi_assets
    from srlm.config import load_config

    graph = build_definitions(load_config(micro_config())).resolve_asset_graph()
    instructions, rejected = dg.AssetKey(["data", "instructions"]), dg.AssetKey(["data", "instructions_rejected"])
    base = dg.AssetKey(["model", "base"])
    assert whole_multi_assets(graph, {instructions}) == ([instructions, rejected], [rejected])
    assert whole_multi_assets(graph, {base}) == ([base], [])


def test_run_of_one_data_output_says_what_else_it_runs(micro_config, capsys):
    """No DagsterInvalidSubsetError: the selection grows to the whole step, in one line (the step itself
    then fails here, as the base model it reads was never materialized)."""
    assert main(["run", "--config", str(micro_config()), "--select", "key:data/instructions"]) == 1
    out, err = capsys.readouterr()
    assert "srlm: also selected data/instructions_rejected (computed in one step with the selection)" in out
    assert re.search(r"failed at (data/)?instructions\b", err)


def test_run_with_an_invalid_selection_exits_2(micro_config, capsys):
    assert main(["run", "--config", str(micro_config()), "--select", "key:"]) == 2
    assert "--select 'key:': Invalid selection string" in capsys.readouterr().err
