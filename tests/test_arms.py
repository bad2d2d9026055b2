"""Arms, their chains of stages, and the keys of each stage's tables (srlm/arms.py, srlm/schemas.py)."""

import pytest

from srlm import registry
from srlm.arms import BASE_STAGE, M0_STAGE, SFT_STAGE, chain, evaluated, generations, parse_arm, stages
from srlm.paths import SQL_DIR
from srlm.schemas import CANDIDATES_TABLE, EVAL_TABLE, SELECTED_TABLE, STAGE_TABLES, TRAINING_EXAMPLES_TABLE, stage_tables

ARMS = [parse_arm(name, "likelihood") for name in ("sft", "srlm", "srlm/length", "self_train/consistency")]


@pytest.mark.parametrize("name, expected", [
    ("sft", ("sft", "sft", None)),
    ("srlm", ("srlm/likelihood", "srlm", "likelihood")),
    ("self_train/length", ("self_train/length", "self_train", "length")),
])
def test_arm_names(name, expected):
    arm = parse_arm(name, "likelihood")
    assert (arm.name, arm.kind, arm.selector) == expected


@pytest.mark.parametrize("name, message", [
    ("dpo", "unknown arm 'dpo'"), ("sft/length", "sft takes no selector"), ("srlm/best", "unknown selector 'best'"),
])
def test_bad_arm_names(name, message):
    with pytest.raises(ValueError, match=message):
        parse_arm(name, "likelihood")


def test_kinds_tasks_and_roles_come_from_the_registry():
    srlm, self_train = parse_arm("srlm", "length"), parse_arm("self_train", "length")
    assert (srlm.prompt, self_train.prompt) == (registry.ENRICH, registry.ANSWER)
    assert srlm.uses_catalyst and not self_train.uses_catalyst
    assert registry.ARM_KINDS == ("sft", "self_train", "srlm") and registry.ROLES == ("candidate", "parent")


def test_srlm_arms_share_m0_and_their_first_generation():
    first = [chain(arm, 2)[1] for arm in ARMS[1:3]]
    assert [s.previous for s in first] == [M0_STAGE, M0_STAGE]
    assert {s.generation_schema for s in first} == {"srlm_iter_1"}
    assert all(s.shared_generation and s.generation_arm == "srlm" for s in first)
    second = chain(ARMS[1], 2)[2]
    assert (second.schema, second.generation_schema, second.generation_arm) == ("srlm_likelihood_iter_2", "srlm_likelihood_iter_2", "srlm/likelihood")


def test_every_generation_is_written_once_and_every_checkpoint_evaluated():
    assert [s.generation_schema for s in generations(ARMS, 2)] == [
        "srlm_iter_1", "srlm_likelihood_iter_2", "srlm_length_iter_2", "self_train_consistency_iter_1", "self_train_consistency_iter_2"
    ]
    assert evaluated(ARMS, 2) == [BASE_STAGE, *stages(ARMS, 2)]
    assert stages(ARMS, 2)[:2] == [SFT_STAGE, M0_STAGE]


def test_table_keys_of_a_stage():
    stage = chain(ARMS[2], 1)[1]  # srlm/length at t = 1: selects from the shared generation
    assert CANDIDATES_TABLE.key(stage) == ("srlm_iter_1", "candidates")
    assert SELECTED_TABLE.key(stage) == ("srlm_length_iter_1", "selected")
    assert EVAL_TABLE.key(stage) == ("srlm_length_iter_1", "eval")
    assert EVAL_TABLE.key(BASE_STAGE) == registry.BASE_EVAL == ("eval", "base_model")
    assert stage_tables(SFT_STAGE) == (TRAINING_EXAMPLES_TABLE, stage_tables(stage)[1])
    assert len(stage_tables(stage)) == 6


@pytest.mark.parametrize("table", STAGE_TABLES, ids=lambda t: t.name)
def test_each_stage_table_feeds_its_union_view(table):
    """sql/views/<view>.sql unions the table (by its name) across arms and iterations."""
    view = (SQL_DIR / "views" / f"{table.view}.sql").read_text()
    placeholder = view.split("{union:", 1)[1].split("}", 1)[0]
    assert table.name in placeholder.split(",")
    assert set(table.keys) <= set(table.columns)
