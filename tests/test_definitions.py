"""The definitions load from a config and expose the asset graph of docs/design.md: shared data and base
model, one chain per arm, shared M0 and first SRLM generation, the evaluations and their comparison."""

import dagster as dg
import pytest

from srlm.config import load_config


@pytest.fixture
def defs(micro_config, monkeypatch):
    path = micro_config({"experiment": {"name": "micro", "iterations": 2, "arms": ["sft", "srlm/likelihood", "srlm/length", "self_train/consistency"]}})
    monkeypatch.setenv("SRLM_CONFIG", str(path))
    from definitions import build_definitions

    return build_definitions(load_config(path))


def keys(defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_asset_keys(defs):
    expected = {
        "model/base", "data/instructions", "data/instructions_rejected", "data/catalyst", "data/catalyst_rejected",
        "sft/training_examples", "sft/checkpoint", "sft/eval",
        "srlm_iter_0/training_examples", "srlm_iter_0/checkpoint", "srlm_iter_0/eval",
        "srlm_iter_1/candidates", "srlm_iter_1/scores", "srlm_iter_1/selector_choices",
        "eval/questions", "eval/base_model", "eval/summary", "eval/scaling", "eval/comparison",
    }
    generation = ("candidates", "scores", "selector_choices")
    selection = ("selected", "training_examples", "checkpoint", "eval")
    for arm in ("srlm_likelihood", "srlm_length", "self_train_consistency"):
        for t in (1, 2):
            expected |= {f"{arm}_iter_{t}/{n}" for n in selection}
            if t == 2 or arm.startswith("self_train"):
                expected |= {f"{arm}_iter_{t}/{n}" for n in generation}
    assert keys(defs) == expected


def parents_of(defs, key: str) -> set[str]:
    return {p.to_user_string() for p in defs.resolve_asset_graph().get(dg.AssetKey.from_user_string(key)).parent_keys}


def test_srlm_arms_share_m0_and_their_first_generation(defs):
    assert parents_of(defs, "srlm_likelihood_iter_1/selected") == {"srlm_iter_1/candidates", "srlm_iter_1/scores"}
    assert parents_of(defs, "srlm_length_iter_1/selected") == {"srlm_iter_1/candidates", "srlm_iter_1/scores"}
    assert "srlm_iter_0/checkpoint" in parents_of(defs, "srlm_iter_1/candidates")
    assert "data/catalyst" in parents_of(defs, "srlm_iter_0/training_examples")


def test_arms_stay_apart_after_selection(defs):
    assert "srlm_likelihood_iter_1/checkpoint" in parents_of(defs, "srlm_likelihood_iter_2/candidates")
    assert "srlm_likelihood_iter_1/training_examples" in parents_of(defs, "srlm_likelihood_iter_2/candidates")
    assert parents_of(defs, "srlm_length_iter_2/selected") == {"srlm_length_iter_2/candidates", "srlm_length_iter_2/scores"}
    assert "srlm_likelihood_iter_2/checkpoint" in parents_of(defs, "srlm_likelihood_iter_2/eval")


def test_sft_is_d0_only_and_starts_self_training(defs):
    assert parents_of(defs, "sft/training_examples") == {"data/instructions", "model/base"}
    assert "sft/checkpoint" in parents_of(defs, "self_train_consistency_iter_1/candidates")
    assert "sft/training_examples" in parents_of(defs, "self_train_consistency_iter_1/training_examples")


def test_comparison_reads_every_evaluation(defs):
    evals = {k for k in keys(defs) if k.endswith("/eval")} | {"eval/base_model"}
    assert parents_of(defs, "eval/comparison") == evals


def test_groups(defs):
    graph = defs.resolve_asset_graph()
    group = lambda k: graph.get(dg.AssetKey.from_user_string(k)).group_name
    assert group("data/instructions") == "data"
    assert group("model/base") == "model"
    assert group("srlm_iter_0/checkpoint") == "srlm_iter_0"
    assert group("srlm_length_iter_2/selected") == "srlm_length_iter_2"
    assert group("srlm_iter_1/selector_choices") == "srlm_iter_1"
    assert group("eval/summary") == "eval"


def test_one_job_per_arm_runs_only_that_arm(defs):
    def job_keys(name):
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys}

    sft = job_keys("arm_sft")
    assert "sft/checkpoint" in sft and "data/instructions" in sft
    assert not any(k.startswith("srlm") for k in sft) and "data/catalyst" not in sft
    length = job_keys("arm_srlm_length")
    assert {"srlm_iter_0/checkpoint", "srlm_iter_1/selector_choices", "srlm_length_iter_2/eval", "eval/comparison"} <= length
    assert not any(k.startswith(("srlm_likelihood", "self_train", "sft/")) for k in length)


def test_every_asset_has_a_description_and_kinds(defs):
    for node in defs.resolve_asset_graph().asset_nodes:
        assert node.description, node.key
        assert any(t.startswith("dagster/kind/") for t in node.tags), node.key


def test_every_table_has_a_schema_check(defs):
    checks = {(c.asset_key.to_user_string(), c.name) for c in defs.resolve_asset_graph().asset_check_keys}
    for key in keys(defs):
        assert (key, "schema") in checks, key


def test_continue_from_previous_adds_the_edge(micro_config, monkeypatch):
    from definitions import build_definitions

    path = micro_config({"train": {"init": "previous"}})
    graph = build_definitions(load_config(path)).resolve_asset_graph()
    parents = {p.to_user_string() for p in graph.get(dg.AssetKey.from_user_string("srlm_likelihood_iter_1/checkpoint")).parent_keys}
    assert "srlm_iter_0/checkpoint" in parents


def test_arms_name_their_selector_and_a_bare_arm_takes_the_default(micro_config):
    cfg = load_config(micro_config({"experiment": {"arms": ["srlm", "self_train"]}, "select": {"selector": "length"}}))
    assert [a.name for a in cfg.arms] == ["srlm/length", "self_train/length"]


def test_selection_code_version_follows_the_arm_selector(defs):
    graph = defs.resolve_asset_graph()
    version = lambda k: graph.get(dg.AssetKey.from_user_string(k)).code_version
    assert version("srlm_length_iter_1/selected") != version("srlm_likelihood_iter_1/selected")
