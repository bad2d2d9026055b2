"""The selection queries (sql/select_*.sql) on small hand-made tables."""

import math

import pyarrow as pa
import pytest

import srlm.sqlfiles
from srlm.selection import count_examples, select_best, select_with_every_selector, selection_sql_version

INF = math.inf


def tables(rows, parents=()):
    """rows: (candidate_id, example_id, sample_index, n_tokens, length, likelihood, consistency)."""
    candidates = pa.table(
        {
            "candidate_id": [r[0] for r in rows],
            "example_id": [r[1] for r in rows],
            "iteration": [1] * len(rows),
            "parent_id": [f"p-{r[1]}" for r in rows],
            "sample_index": [r[2] for r in rows],
            "n_tokens": [r[3] for r in rows],
        }
    )
    score_rows = [(r[0], r[1], "candidate", r[4], r[5], r[6]) for r in rows]
    score_rows += [(f"p-{e}", e, "parent", length, lik, cons) for e, length, lik, cons in parents]
    scores = pa.table(
        {
            "candidate_id": [r[0] for r in score_rows],
            "example_id": [r[1] for r in score_rows],
            "iteration": [1] * len(score_rows),
            "role": [r[2] for r in score_rows],
            "length": [float(r[3]) for r in score_rows],
            "likelihood": [float(r[4]) for r in score_rows],
            "consistency": [float(r[5]) for r in score_rows],
        }
    )
    return candidates, scores


def chosen(result) -> dict[str, str]:
    return dict(zip(result["example_id"].to_pylist(), result["candidate_id"].to_pylist()))


ROWS = [
    # id, example, sample, tokens, length, likelihood, consistency
    ("a", "e1", 0, 30, 30, 0.10, 0.40),
    ("b", "e1", 1, 90, -INF, 0.90, 0.90),  # degenerate: never kept by any selector
    ("c", "e1", 2, 20, 20, 0.30, 0.50),
    ("d", "e2", 0, 10, 10, 0.20, 0.20),
    ("e", "e2", 1, 10, 10, 0.20, 0.20),  # full tie with d
]


def test_length_keeps_the_longest_non_degenerate():
    assert chosen(select_best(*tables(ROWS), "length")) == {"e1": "a", "e2": "d"}


def test_likelihood_keeps_the_highest_gain():
    assert chosen(select_best(*tables(ROWS), "likelihood")) == {"e1": "c", "e2": "d"}


def test_consistency_keeps_the_medoid():
    assert chosen(select_best(*tables(ROWS), "consistency")) == {"e1": "c", "e2": "d"}


@pytest.mark.parametrize("selector", ["length", "likelihood", "consistency"])
def test_ties_break_deterministically_whatever_the_row_order(selector):
    forward = chosen(select_best(*tables(ROWS), selector))
    backward = chosen(select_best(*tables(list(reversed(ROWS))), selector))
    assert forward == backward


def test_margin_over_the_parent():
    parents = [("e1", 25, 0.25, 0.0), ("e2", 0, 0.0, 0.0)]
    result = select_best(*tables(ROWS, parents), "likelihood", margin=0.1)
    # e1: best gain 0.30 beats its parent's 0.25 by only 0.05 -> nothing kept; e2: 0.20 > 0.0 + 0.1
    assert chosen(result) == {"e2": "d"}
    row = result.to_pylist()[0]
    assert row["parent_score"] == 0.0 and row["score"] == 0.2 and row["margin"] == 0.1 and row["selector"] == "likelihood"


def test_no_margin_keeps_one_per_example_even_below_the_parent():
    parents = [("e1", 500, 5.0, 1.0), ("e2", 500, 5.0, 1.0)]
    assert len(select_best(*tables(ROWS, parents), "length")) == 2


def test_example_with_only_degenerate_candidates_keeps_nothing():
    rows = [("x", "e3", 0, 50, -INF, 0.5, 0.5)]
    assert select_best(*tables(rows), "likelihood").num_rows == 0


def test_unknown_selector():
    with pytest.raises(ValueError, match="unknown selector 'best'"):
        select_best(*tables(ROWS), "best")


def test_reads_parquet_files_too(tmp_path):
    import pyarrow.parquet as pq

    c, s = tables(ROWS)
    pq.write_table(c, tmp_path / "c.parquet")
    pq.write_table(s, tmp_path / "s.parquet")
    assert chosen(select_best(tmp_path / "c.parquet", tmp_path / "s.parquet", "length")) == {"e1": "a", "e2": "d"}


def test_every_selector_choice_is_kept_side_by_side():
    parents = [("e1", 25, 0.25, 0.0), ("e2", 0, 0.0, 0.0)]
    choices = select_with_every_selector(*tables(ROWS, parents), margin=0.1).to_pylist()
    picks = {(r["selector"], r["example_id"]): r["candidate_id"] for r in choices}
    assert len(picks) == len(choices)  # at most one row per selector and example
    # e1: only length (30 > 25 + 0.1) and consistency (0.5 > 0.0 + 0.1) beat the parent; likelihood keeps none
    assert picks == {("length", "e1"): "a", ("consistency", "e1"): "c", ("length", "e2"): "d",
                     ("likelihood", "e2"): "d", ("consistency", "e2"): "d"}
    for selector in ("length", "likelihood", "consistency"):
        alone = select_best(*tables(ROWS, parents), selector, margin=0.1).to_pylist()
        assert [r for r in choices if r["selector"] == selector] == alone


def test_count_examples_reads_parquet(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(tables(ROWS)[0], tmp_path / "c.parquet")
    assert count_examples(tmp_path / "c.parquet") == 2


def test_sql_version_follows_the_query_files(tmp_path, monkeypatch):
    import shutil

    before = {s: selection_sql_version([s]) for s in ("length", "likelihood")}
    every_before = selection_sql_version()
    sql_dir = tmp_path / "sql"
    shutil.copytree(srlm.sqlfiles.SQL_DIR, sql_dir)
    (sql_dir / "select_length.sql").write_text((sql_dir / "select_length.sql").read_text() + "\n-- edited\n")
    monkeypatch.setattr(srlm.sqlfiles, "SQL_DIR", sql_dir)
    assert selection_sql_version(["length"]) != before["length"]
    assert selection_sql_version(["likelihood"]) == before["likelihood"]  # another selector's file was edited
    assert selection_sql_version() != every_before


def test_sql_version_of_an_unknown_selector():
    with pytest.raises(ValueError, match="unknown selector 'best'"):
        selection_sql_version(["best"])
