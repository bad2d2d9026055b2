"""One real `srlm run` of the whole loop on the micro config (bootstrap model, M0, one iteration, evaluation),
then the questions a user asks of it in SQL, the checkpoints on disk, and Dagster's staleness."""

import json
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from conftest import run_micro_experiment
from srlm.config import load_config
from srlm.warehouse import query_read_only

pytestmark = pytest.mark.slow

EXAMPLES, CANDIDATES = 6, 3  # expand.examples and expand.candidates of configs/micro.yaml
BENCHMARKS = 5


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Run the micro experiment once through the CLI; returns (config path, home)."""
    return run_micro_experiment(tmp_path_factory.mktemp("e2e"))


def sql(home, query):
    columns, rows = query_read_only(home, query)
    return [dict(zip(columns, row)) for row in rows]


def one(home, query):
    rows = sql(home, query)
    assert len(rows) == 1, rows
    return next(iter(rows[0].values()))


def test_instructions_counts_add_up(experiment):
    _, home = experiment
    kept = one(home, "select count(*) from data.instructions")
    rejected = one(home, "select count(*) from data.instructions_rejected")
    assert kept + rejected == 16 + 12  # the two samples of configs/micro.yaml
    assert one(home, "select count(distinct example_id) from data.instructions") == kept
    assert one(home, "select count(*) from data.catalyst") == 12


def test_candidates_per_iteration(experiment):
    _, home = experiment
    rows = sql(home, "select iteration, count(*) n, count(distinct example_id) e from candidates group by 1")
    assert rows == [{"iteration": 1, "n": EXAMPLES * CANDIDATES, "e": EXAMPLES}]
    # every candidate enriched the rationale its example had in iter_0's training set
    assert one(home, """
        select count(*) from candidates c
        left join iter_0.training_examples t on t.task = 'answer' and t.rationale_id = c.parent_id
        where t.example_id is null or t.example_id <> c.example_id""") == 0


def test_scores_cover_candidates_and_parents(experiment):
    _, home = experiment
    roles = {r["role"]: r["n"] for r in sql(home, "select role, count(*) n from scores group by 1")}
    assert roles == {"candidate": EXAMPLES * CANDIDATES, "parent": EXAMPLES}
    assert one(home, "select count(*) from scores s anti join candidates c using (candidate_id) where role = 'candidate'") == 0


def test_selection_keeps_at_most_one_existing_candidate_per_example(experiment):
    _, home = experiment
    selected = sql(home, "select * from selected")
    assert selected, "the micro M0 should write some usable rationales"
    assert {r["selector"] for r in selected} == {"likelihood"}
    assert len({r["example_id"] for r in selected}) == len(selected)
    assert one(home, "select count(*) from selected anti join candidates using (candidate_id)") == 0
    # the winner has the best likelihood score among its example's non-degenerate candidates
    assert one(home, """
        select count(*) from selected s join scores w using (candidate_id)
        where exists (select 1 from scores o where o.example_id = s.example_id and o.role = 'candidate'
                      and isfinite(o.length) and o.likelihood > w.likelihood)""") == 0


def test_selector_choices_hold_every_selector_and_the_configured_one_is_selected(experiment):
    _, home = experiment
    assert {r["selector"] for r in sql(home, "select distinct selector from selector_choices")} == {"length", "likelihood", "consistency"}
    assert one(home, "select count(*) from (select example_id, selector from selector_choices group by all having count(*) > 1)") == 0
    configured = "select * from selector_choices where selector = 'likelihood'"  # the configured selector (micro keeps the default's)
    assert one(home, f"select count(*) from (({configured}) except all (select * from selected))") == 0
    assert one(home, f"select count(*) from ((select * from selected) except all ({configured}))") == 0
    # the README's question: per example, which candidate each selector chose and whether they agree
    rows = sql(home, WHAT_EACH_SELECTOR_CHOSE)
    assert len(rows) == one(home, "select count(distinct (iteration, example_id)) from selector_choices")
    for row in rows:
        picks = [row["length"], row["likelihood"], row["consistency"]]
        assert row["all_agree"] == (None not in picks and len(set(picks)) == 1)


WHAT_EACH_SELECTOR_CHOSE = """
    select iteration, example_id,
           any_value(candidate_id) filter (where selector = 'length') as length,
           any_value(candidate_id) filter (where selector = 'likelihood') as likelihood,
           any_value(candidate_id) filter (where selector = 'consistency') as consistency,
           count(*) = 3 and count(distinct candidate_id) = 1 as all_agree
    from selector_choices group by iteration, example_id order by iteration, example_id"""


def test_training_examples_use_the_selected_rationales(experiment):
    _, home = experiment
    n0 = one(home, "select count(*) from iter_0.training_examples")
    assert one(home, "select count(*) from iter_1.training_examples") == n0
    replaced = one(home, """
        select count(*) from iter_1.training_examples t join selected s
        on s.example_id = t.example_id and s.candidate_id = t.rationale_id where t.rationale_iteration = 1""")
    assert replaced == one(home, "select count(*) from selected")


def test_ancestry_reaches_the_original_example(experiment):
    _, home = experiment
    candidate = one(home, "select candidate_id from selected order by example_id limit 1")
    chain = sql(home, f"select * from ancestry where candidate_id = '{candidate}' order by depth")
    assert chain[0]["depth"] == 0 and chain[0]["iteration"] == 1 and chain[0]["checkpoint_id"].startswith("M0-")
    assert chain[-1]["is_original"]
    example_id = one(home, f"select example_id from candidates where candidate_id = '{candidate}'")
    assert chain[-1]["ancestor_id"] == example_id


def test_checkpoints_chain_and_load(experiment):
    _, home = experiment
    rows = sql(home, "select * from checkpoints order by iteration")
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    assert rows[0]["checkpoint_id"].startswith("base-")
    assert [r["checkpoint_id"][:3] for r in rows[1:]] == ["M0-", "M1-"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(rows[0]["path"])
    for row in rows[1:]:
        assert (home / "checkpoints").as_posix() in row["path"]
        model = PeftModel.from_pretrained(base, row["path"], adapter_name=row["checkpoint_id"][:2])
        assert model.peft_config


def test_every_checkpoint_is_evaluated_on_every_benchmark(experiment):
    _, home = experiment
    rows = sql(home, "select checkpoint_id, count(distinct benchmark) b from evals group by 1")
    assert len(rows) == 3 and all(r["b"] == BENCHMARKS for r in rows)
    summary = sql(home, "select * from eval.summary")
    assert len(summary) == 3 * BENCHMARKS
    assert all(0 <= r["accuracy"] <= 1 for r in summary)
    scaling = sql(home, "select distinct n_samples from eval.scaling order by 1")
    assert [r["n_samples"] for r in scaling] == [1, 2, 4]


def test_csv_and_json_output_of_the_cli(experiment):
    config, home = experiment
    proc = subprocess.run(
        [sys.executable, "-m", "srlm.cli", "sql", "--config", str(config), "select iteration, count(*) n from candidates group by 1", "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"iteration": 1, "n": EXAMPLES * CANDIDATES}]


def _stale(config, home, monkeypatch, overrides=None):
    """Stale status of every asset when the definitions are built from `config` (+ overrides)."""
    from definitions import build_definitions

    data = yaml.safe_load(config.read_text())
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    path = config.parent / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    graph = build_definitions(load_config(path)).resolve_asset_graph()
    with dg.DagsterInstance.get() as instance:
        view = AssetGraphView(
            temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
            instance=instance,
            asset_graph=graph,
        )
        resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
        return {k.to_user_string(): resolver.get_status(k) for k in graph.get_all_asset_keys()}


def test_nothing_is_stale_after_the_run(experiment, monkeypatch):
    config, home = experiment
    status = _stale(config, home, monkeypatch)
    assert {k for k, s in status.items() if s != StaleStatus.FRESH} == set()


def test_changing_the_selector_marks_only_the_selection_stale(experiment, monkeypatch):
    config, home = experiment
    status = _stale(config, home, monkeypatch, {"select": {"selector": "consistency"}})
    # Dagster marks the asset whose code version changed; its dependents follow once it is rematerialized
    # with a new data version
    assert {k for k, s in status.items() if s == StaleStatus.STALE} == {"iter_1/selected"}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("select_likelihood", {"iter_1/selected", "iter_1/selector_choices"}),  # the configured selector's query
        ("select_length", {"iter_1/selector_choices"}),
    ],
)
def test_editing_a_selection_query_marks_the_assets_that_run_it_stale(experiment, monkeypatch, tmp_path, query, expected):
    import shutil

    import srlm.sqlfiles

    config, home = experiment
    sql_dir = tmp_path / "sql"
    shutil.copytree(srlm.sqlfiles.SQL_DIR, sql_dir)
    (sql_dir / f"{query}.sql").write_text((sql_dir / f"{query}.sql").read_text() + "\n-- edited\n")
    monkeypatch.setattr(srlm.sqlfiles, "SQL_DIR", sql_dir)
    status = _stale(config, home, monkeypatch)
    assert {k for k, s in status.items() if s == StaleStatus.STALE} == expected


@pytest.mark.parametrize(
    "template, expected",
    [
        # the enriching prompt: M0's enriching examples and the candidates it writes
        ("ENRICH_VERSION", {"iter_0/training_examples", "iter_1/candidates"}),
        # the think tags: every answering completion, the candidates' extraction and the likelihood prompts
        ("ANSWER_FORMAT_VERSION", {"iter_0/training_examples", "iter_1/candidates", "iter_1/scores", "iter_1/training_examples"}),
        ("RATIONALE_EXTRACTION_VERSION", {"iter_1/candidates"}),
        # the teacher's prompt builds only a teacher catalyst; the micro catalyst is derived
        ("TEACHER_VERSION", set()),
    ],
)
def test_editing_a_prompt_template_marks_the_iteration_assets_that_render_it_stale(experiment, monkeypatch, template, expected):
    from srlm import prompts

    config, home = experiment
    monkeypatch.setattr(prompts, template, "edited")
    status = _stale(config, home, monkeypatch)
    # data/ and model/ assets have their own template versions (assets/data.py, assets/model.py)
    assert {k for k, s in status.items() if s == StaleStatus.STALE and k.startswith("iter_")} == expected
