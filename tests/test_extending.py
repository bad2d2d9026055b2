"""Extending the method from outside the package: a new selector, "shortest" (the fewest tokens among the
non-degenerate candidates), is registered with its scorer and its own query file, then arms use it, scoring
stores its column, selection runs its query, and a micro experiment runs it end to end."""

import math

import pyarrow as pa
import pytest

from srlm import registry
from srlm.arms import parse_arm
from srlm.registry import register_selector, selector_names
from srlm.scoring import score_schema
from srlm.selection import select_best, select_with_every_selector
from srlm.selectors import NEG_INF, Measured

SHORTEST_SQL = """
-- Selector "shortest": per example, the candidate with the fewest tokens among the non-degenerate ones
-- (degenerate text scores -inf and is never kept). Ties: the lower sample index, then candidate_id.
-- Optional $margin: keep the winner only if it beats its parent's score by more than $margin.
WITH ranked AS (
    SELECT c.example_id, c.iteration, c.candidate_id, c.parent_id, s.shortest AS score, p.shortest AS parent_score,
           row_number() OVER (PARTITION BY c.example_id ORDER BY s.shortest DESC, c.sample_index, c.candidate_id) AS rank
    FROM candidates AS c
    JOIN scores AS s ON s.candidate_id = c.candidate_id AND s.role = 'candidate'
    LEFT JOIN scores AS p ON p.candidate_id = c.parent_id AND p.example_id = c.example_id AND p.role = 'parent'
    WHERE isfinite(s.shortest)
)
SELECT example_id, iteration, candidate_id, 'shortest' AS selector, score, parent_score, parent_id, CAST($margin AS DOUBLE) AS margin
FROM ranked
WHERE rank = 1 AND ($margin IS NULL OR score > coalesce(parent_score, '-inf'::DOUBLE) + $margin)
ORDER BY example_id
"""


def shortest(m: Measured) -> float:
    """Fewer tokens score higher; degenerate text never wins."""
    return NEG_INF if m.degenerate else -float(m.n_tokens)


@pytest.fixture
def registered(tmp_path):
    """"shortest" registered for one test (the registry is restored afterwards)."""
    saved = dict(registry.SELECTORS)
    query = tmp_path / "select_shortest.sql"
    query.write_text(SHORTEST_SQL)
    register_selector("shortest", shortest, query)
    yield
    registry.SELECTORS.clear()
    registry.SELECTORS.update(saved)


def test_arms_know_a_selector_once_it_is_registered(registered):
    assert parse_arm("srlm/shortest", "likelihood").selector == "shortest"
    assert selector_names()[-1] == "shortest"
    assert score_schema().names[5:9] == ["length", "likelihood", "consistency", "shortest"]


def test_an_unregistered_selector_is_refused():
    with pytest.raises(ValueError, match="unknown selector 'shortest'; choose one of length, likelihood, consistency"):
        parse_arm("srlm/shortest", "likelihood")


@pytest.mark.parametrize("name, query, error", [("Shortest", None, ValueError), ("length", None, ValueError), ("brief", "missing.sql", FileNotFoundError)])
def test_registration_refuses_bad_names_twice_the_same_name_and_missing_queries(name, query, error):
    with pytest.raises(error):
        register_selector(name, shortest, query)
    assert selector_names() == ("length", "likelihood", "consistency")


def test_the_registered_query_keeps_the_shortest_non_degenerate_candidate(registered):
    candidates = pa.table({
        "candidate_id": ["a", "b", "c", "d", "e"], "example_id": ["e1", "e1", "e1", "e2", "e2"], "iteration": [1] * 5,
        "parent_id": ["p1", "p1", "p1", "p2", "p2"], "sample_index": [0, 1, 2, 0, 1], "n_tokens": [30, 5, 20, 10, 10],
    })
    scores = pa.table({
        "candidate_id": ["a", "b", "c", "d", "e"], "example_id": ["e1", "e1", "e1", "e2", "e2"], "iteration": [1] * 5,
        "role": ["candidate"] * 5, "shortest": [-30.0, NEG_INF, -20.0, -10.0, -10.0],
    })
    kept = select_best(candidates, scores, "shortest").to_pylist()
    assert [(r["example_id"], r["candidate_id"], r["score"]) for r in kept] == [("e1", "c", -20.0), ("e2", "d", -10.0)]
    assert kept[0]["parent_score"] is None  # no parent row given


def test_every_selector_includes_the_registered_one(registered):
    candidates = pa.table({"candidate_id": ["a"], "example_id": ["e1"], "iteration": [1], "parent_id": ["p1"], "sample_index": [0], "n_tokens": [3]})
    scores = pa.table({"candidate_id": ["a"], "example_id": ["e1"], "iteration": [1], "role": ["candidate"],
                       **{name: [1.0] for name in ("length", "likelihood", "consistency", "shortest")}})
    assert select_with_every_selector(candidates, scores)["selector"].to_pylist() == ["length", "likelihood", "consistency", "shortest"]


@pytest.mark.slow
def test_a_registered_selector_runs_end_to_end_on_micro(registered, tmp_path, monkeypatch, capsys):
    """The micro experiment with the one arm srlm/shortest (no evaluation), run in this process through the
    CLI's `run` so the registration holds; its selection keeps, per example, the candidate the rule names."""
    import yaml
    from conftest import write_micro_config

    from srlm.cli import main
    from srlm.config import CONFIG_ENV, HOME_ENV
    from srlm.warehouse import query_read_only

    config, home = write_micro_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["experiment"]["arms"] = ["srlm/shortest"]
    data["eval"]["benchmarks"] = {name: {"enabled": False} for name in data["eval"]["benchmarks"]}
    config.write_text(yaml.safe_dump(data))
    for var in (CONFIG_ENV, HOME_ENV, "DAGSTER_HOME"):  # `run` exports them: restored after the test
        monkeypatch.setenv(var, "")

    assert main(["run", "--config", str(config)]) == 0
    assert "succeeded" in capsys.readouterr().out

    def rows(query):
        columns, found = query_read_only(home, query)
        return [dict(zip(columns, row)) for row in found]

    assert rows("select arm, iteration from checkpoints where arm = 'srlm/shortest'") == [{"arm": "srlm/shortest", "iteration": 1}]
    scored = rows("select s.example_id, s.candidate_id, s.n_tokens, s.degenerate, s.shortest, c.sample_index from scores s "
                  "join candidates c using (candidate_id) where s.role = 'candidate'")
    assert scored and all(r["shortest"] == (-r["n_tokens"] if r["degenerate"] is None else -math.inf) for r in scored)
    expected = {}
    for r in sorted(scored, key=lambda r: (r["n_tokens"], r["sample_index"])):
        if r["degenerate"] is None:
            expected.setdefault(r["example_id"], r["candidate_id"])
    kept = rows("select example_id, candidate_id, selector from srlm_shortest_iter_1.selected")
    assert kept and {r["example_id"]: r["candidate_id"] for r in kept} == expected
    assert {r["selector"] for r in kept} == {"shortest"}
    assert {r["selector"] for r in rows("select distinct selector from selector_choices")} == set(selector_names())
