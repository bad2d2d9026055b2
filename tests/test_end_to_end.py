"""One real `srlm run` of the whole loop on the micro config (bootstrap model; arms sft and srlm/likelihood:
sft, M0, one iteration; evaluation and comparison), then the questions a user asks of it in SQL, the
checkpoints on disk, Dagster's staleness, and a run killed in the middle of expansion that resumes."""

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
import yaml
from conftest import run_micro_experiment
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

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
    # every candidate enriched the rationale its example had in M0's training set
    assert one(home, """
        select count(*) from candidates c
        left join srlm_iter_0.training_examples t on t.task = 'answer' and t.rationale_id = c.parent_id
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
    # the arm's selector (srlm/likelihood) keeps what selector_choices says likelihood keeps
    columns = "example_id, iteration, candidate_id, selector, score, parent_score"
    configured = f"select {columns} from selector_choices where selector = 'likelihood'"
    assert one(home, f"select count(*) from (({configured}) except all (select {columns} from selected))") == 0
    assert one(home, f"select count(*) from ((select {columns} from selected) except all ({configured}))") == 0
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
    n0 = one(home, "select count(*) from srlm_iter_0.training_examples")
    assert one(home, "select count(*) from srlm_likelihood_iter_1.training_examples") == n0
    assert one(home, "select count(*) from sft.training_examples where task = 'enrich'") == 0  # no catalyst
    replaced = one(home, """
        select count(*) from srlm_likelihood_iter_1.training_examples t join selected s
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
    rows = sql(home, "select * from checkpoints order by iteration, arm")
    assert [(r["arm"], r["iteration"]) for r in rows] == [("base", -1), ("sft", 0), ("srlm", 0), ("srlm/likelihood", 1)]
    assert rows[0]["checkpoint_id"].startswith("base-")
    assert [r["checkpoint_id"][:3] for r in rows[1:]] == ["sft", "M0-", "M1-"]
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
    assert len(rows) == 4 and all(r["b"] == BENCHMARKS for r in rows)
    summary = sql(home, "select * from eval.summary")
    assert len(summary) == 4 * BENCHMARKS
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


def test_changing_the_margin_marks_only_the_selections_stale(experiment, monkeypatch):
    config, home = experiment
    status = _stale(config, home, monkeypatch, {"select": {"margin": 0.5}})
    # Dagster marks the asset whose code version changed; its dependents follow once it is rematerialized
    # with a new data version
    assert {k for k, s in status.items() if s == StaleStatus.STALE} == {"srlm_likelihood_iter_1/selected", "srlm_iter_1/selector_choices"}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("select_likelihood", {"srlm_likelihood_iter_1/selected", "srlm_iter_1/selector_choices"}),  # the arm's selector
        ("select_length", {"srlm_iter_1/selector_choices"}),
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
        ("ENRICH_VERSION", {"srlm_iter_0/training_examples", "srlm_iter_1/candidates"}),
        # the think tags: every answering completion, the candidates' extraction and the likelihood prompts
        ("ANSWER_FORMAT_VERSION", {"sft/training_examples", "srlm_iter_0/training_examples", "srlm_iter_1/candidates",
                                   "srlm_iter_1/scores", "srlm_likelihood_iter_1/training_examples"}),
        ("RATIONALE_EXTRACTION_VERSION", {"srlm_iter_1/candidates"}),
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
    assert {k for k, s in status.items() if s == StaleStatus.STALE and not k.startswith(("data/", "model/"))} == expected


def test_comparison_pairs_each_checkpoint_with_sft_and_its_previous(experiment):
    _, home = experiment
    pairs = {tuple(r.values()) for r in sql(home, "select distinct checkpoint, reference, relation from eval.comparison")}
    assert pairs == {
        ("sft", "base", "vs_previous"),
        ("M0", "base", "vs_previous"),
        ("M0", "sft", "vs_sft"),
        ("M1 srlm/likelihood", "M0", "vs_previous"),
        ("M1 srlm/likelihood", "sft", "vs_sft"),
    }
    for row in sql(home, "select * from eval.comparison"):
        assert row["questions"] == 4  # every benchmark's limit in configs/micro.yaml, paired question by question
        excludes_zero = row["ci_low"] > 0 or row["ci_high"] < 0
        assert (row["verdict"] != "no detectable difference") == excludes_zero, row
        assert row["min_detectable_difference"] > 0


def test_a_second_run_keeps_everything(experiment):
    config, _ = experiment
    proc = subprocess.run([sys.executable, "-m", "srlm.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to do: every asset is up to date" in proc.stdout
    assert "srlm: kept " in proc.stdout and "srlm: to materialize" not in proc.stdout


def _tables(home) -> dict:
    """Every table of a home, without what differs between two runs by nature (the run ids, the seconds
    spent) and with the home's own path replaced, so two homes compare cell by cell."""
    import polars as pl

    out = {}
    for file in sorted((home / "tables").glob("*/*.parquet")):
        df = pl.read_parquet(file).drop(["run_id", "seconds"], strict=False)
        df = df.with_columns(pl.col(pl.String).str.replace_all(str(home), "<home>", literal=True))
        out[f"{file.parent.name}.{file.stem}"] = df
    return out


def test_a_run_killed_during_expansion_resumes_to_the_same_tables(experiment, tmp_path):
    import signal

    from conftest import write_micro_config

    _, reference = experiment
    config, home = write_micro_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("SRLM_CONFIG", "SRLM_HOME", "DAGSTER_HOME")}
    command = [sys.executable, "-m", "srlm.cli", "run", "--config", str(config)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # the first of the two candidate shards is committed: kill the run there
        seen.append(line)
        if "srlm_iter_1/candidates: shard 1/2" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not (home / "tables" / "srlm_iter_1" / "candidates.parquet").exists()

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "cleared the lock of a run that is no longer active" in rerun.stdout
    to_materialize = "".join(line for line in rerun.stdout.splitlines() if line.startswith("srlm: to materialize"))
    assert "srlm: kept " in rerun.stdout and "srlm_iter_0/checkpoint" not in to_materialize  # M0 is not retrained
    assert "shard 1/2" not in rerun.stdout and "shard 2/2" in rerun.stdout  # only the unfinished shard is generated
    mine, theirs = _tables(home), _tables(reference)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert mine[name].equals(theirs[name]), name
