"""The definitions load from a config and expose the asset graph DESIGN.md describes."""

import dagster as dg
import pytest

from srlm.config import load_config


@pytest.fixture
def defs(micro_config, monkeypatch):
    path = micro_config({"experiment": {"name": "micro", "iterations": 2}})
    monkeypatch.setenv("SRLM_CONFIG", str(path))
    from definitions import build_definitions

    return build_definitions(load_config(path))


def keys(defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


def test_asset_keys(defs):
    expected = {
        "model/base", "data/instructions", "data/instructions_rejected", "data/catalyst", "data/catalyst_rejected",
        "iter_0/training_examples", "iter_0/checkpoint", "iter_0/eval",
        "eval/questions", "eval/base_model", "eval/summary", "eval/scaling",
    }
    for t in (1, 2):
        expected |= {f"iter_{t}/{n}" for n in ("candidates", "scores", "selected", "selector_choices", "training_examples", "checkpoint", "eval")}
    assert keys(defs) == expected


def test_iteration_chain(defs):
    graph = defs.resolve_asset_graph()
    parents = lambda k: {p.to_user_string() for p in graph.get(dg.AssetKey.from_user_string(k)).parent_keys}  # noqa: E731
    assert "iter_1/checkpoint" in parents("iter_2/candidates")
    assert "iter_1/training_examples" in parents("iter_2/candidates")
    assert parents("iter_2/selected") == {"iter_2/candidates", "iter_2/scores"}
    assert parents("iter_2/selector_choices") == {"iter_2/candidates", "iter_2/scores"}
    assert "iter_2/checkpoint" in parents("iter_2/eval")


def test_groups(defs):
    graph = defs.resolve_asset_graph()
    group = lambda k: graph.get(dg.AssetKey.from_user_string(k)).group_name  # noqa: E731
    assert group("data/instructions") == "data"
    assert group("model/base") == "model"
    assert group("iter_0/checkpoint") == "iter_0"
    assert group("iter_2/selected") == "iter_2"
    assert group("iter_2/selector_choices") == "iter_2"
    assert group("eval/summary") == "eval"


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
    parents = {p.to_user_string() for p in graph.get(dg.AssetKey.from_user_string("iter_1/checkpoint")).parent_keys}
    assert "iter_0/checkpoint" in parents


def test_selector_change_changes_the_code_version_of_selected_only(micro_config):
    from definitions import build_definitions

    def version(selector, asset):
        graph = build_definitions(load_config(micro_config({"select": {"selector": selector}}))).resolve_asset_graph()
        return graph.get(dg.AssetKey.from_user_string(asset)).code_version

    assert version("length", "iter_1/selected") != version("consistency", "iter_1/selected")
    # every selector's choice is stored whatever the configured selector
    assert version("length", "iter_1/selector_choices") == version("consistency", "iter_1/selector_choices")
