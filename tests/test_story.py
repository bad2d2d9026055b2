"""One rationale's story (the `story` metadata of iter_t/selected), from a hand-made two-iteration warehouse."""

import pytest
from conftest import put_table

from srlm import schemas
from srlm.story import rationale_story
from srlm.warehouse import refresh_catalog


def candidate(cid, parent, iteration, checkpoint, text, sample):
    return {"candidate_id": cid, "arm": "srlm/likelihood", "example_id": "e1", "iteration": iteration, "parent_id": parent,
            "checkpoint_id": checkpoint, "text": text, "sample_index": sample}


def score(cid, iteration, role, length, likelihood):
    return {"candidate_id": cid, "arm": "srlm/likelihood", "example_id": "e1", "iteration": iteration, "role": role,
            "length": length, "likelihood": likelihood, "consistency": 0.5}


@pytest.fixture
def home(tmp_path):
    put_table(tmp_path, ("data", "instructions"), schemas.INSTRUCTIONS,
              [{"example_id": "e1", "instruction": "Add 2 and 3.", "rationale": "two plus three"}])
    put_table(tmp_path, ("iter_1", "candidates"), schemas.CANDIDATES,
              [candidate("a1", "e1", 1, "M0-x", "first enrichment", 0)])
    put_table(tmp_path, ("iter_1", "scores"), schemas.scores_columns(), [score("a1", 1, "candidate", 2.0, 0.1)])
    put_table(tmp_path, ("iter_2", "candidates"), schemas.CANDIDATES,
              [candidate("b1", "a1", 2, "M1-y", "second | enrichment", 0),
               candidate("b2", "a1", 2, "M1-y", "loops loops", 1)])
    put_table(tmp_path, ("iter_2", "scores"), schemas.scores_columns(),
              [score("a1", 2, "parent", 2.0, 0.1), score("b1", 2, "candidate", 2.0, 0.7),
               score("b2", 2, "candidate", float("-inf"), 0.9)])
    refresh_catalog(tmp_path)
    return tmp_path


def test_the_story_walks_back_to_the_example_and_shows_the_scoreboard(home):
    story = rationale_story(home, "b1", "likelihood", "srlm_likelihood_iter_2")
    assert "Add 2 and 3." in story and "two plus three" in story  # the example and D0's own rationale
    chain = [line for line in story.splitlines() if line.startswith(("| D0", "| 1 ", "| 2 "))]
    assert [line.split(" | ")[0] for line in chain] == ["| D0", "| 1", "| 2"]  # oldest first
    assert "`M0-x`" in chain[1] and "first enrichment" in chain[1]
    assert "`M1-y`" in chain[2] and "second \\| enrichment" in chain[2]  # a pipe cannot break the table
    board = {line.split(" | ")[0]: line for line in story.splitlines() if line.startswith(("| parent", "| sample"))}
    assert set(board) == {"| parent", "| sample 0", "| sample 1"}
    assert board["| sample 0"].endswith("**yes** |") and "**yes**" not in board["| sample 1"]
    assert "-inf" in board["| sample 1"]  # the degenerate sibling that was not kept, despite its likelihood
    assert "trains M2 through `srlm_likelihood_iter_2/training_examples`" in story


def test_an_unknown_candidate_says_so(home):
    assert "no candidate nope" in rationale_story(home, "nope", "length", "srlm_length_iter_1")
