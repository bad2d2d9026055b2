import math
import re

import pytest
from conftest import FakeEngine, engine_settings

from srlm import prompts, selectors
from srlm.engines.types import LogProb
from srlm.scoring import Reference, Scorable, likelihood_context, score, score_schema

NGRAM, MAX_REPEATED = 3, 0.3


def known_gains(base: dict[str, float], gains: dict[str, float]):
    """Scores for FakeEngine: words are tokens; the continuation's mean log-prob is a per-example base (from
    the instruction) plus a known gain per rationale (from the think block)."""

    def logprob(context: str, continuation: str) -> LogProb:
        instruction = re.search(r"<user>(.*?)</user>", context, re.S).group(1)
        rationale = re.search(r"<think>(.*?)</think>\n$", context, re.S).group(1)
        n = len(continuation.split())
        return LogProb(total=n * (base[instruction] + gains.get(rationale, 0.0)), n_tokens=n)

    return logprob


REFS = {
    "e1": Reference("What is 6 * 7?", "", "The answer is 42."),
    "e2": Reference("Name a colour.", "", "Red."),
}
E1_TEXTS = {
    "c1": "six times seven is forty two",
    "c2": "six times seven is forty two because six sevens make forty two",
    "c3": "forty two because six sevens make forty two and that is checked",
}
E2_ITEMS = [
    Scorable("c4", "e2", "candidate", "   ", "stop"),  # empty
    Scorable("c5", "e2", "candidate", "red is red is red is red is red is red", "stop"),  # repetitive
    Scorable("c6", "e2", "candidate", "red is a warm colour and", "length"),  # cut off
    Scorable("c7", "e2", "candidate", "red is a warm colour of the spectrum", "stop"),
]
ITEMS = (
    [Scorable(cid, "e1", "candidate", text, "stop") for cid, text in E1_TEXTS.items()]
    + E2_ITEMS
    + [Scorable("p1", "e1", "parent", "six sevens", "stop"), Scorable("p2", "e2", "parent", "", "stop")]
)
GAINS = {E1_TEXTS["c1"]: 0.5, E1_TEXTS["c2"]: 1.25, E1_TEXTS["c3"]: -0.75, "six sevens": 0.25, E2_ITEMS[3].text: 2.0}


def run(items=ITEMS, adapter="ckpt/adapter"):
    engine = FakeEngine(logprobs=known_gains({"What is 6 * 7?": -2.0, "Name a colour.": -3.0}, GAINS))
    table = score(items, REFS, engine, iteration=2, arm="srlm/likelihood", adapter=adapter, ngram=NGRAM, max_repeated_fraction=MAX_REPEATED)
    return engine, table, {(r["candidate_id"], r["role"]): r for r in table.to_pylist()}


def test_one_row_per_item_with_parents_and_schema():
    _, table, rows = run()
    assert table.schema == score_schema()
    assert table.num_rows == len(ITEMS)
    assert [(r["candidate_id"], r["role"]) for r in table.to_pylist()] == [(i.candidate_id, i.role) for i in ITEMS]
    assert {k for k, r in rows.items() if r["role"] == "parent"} == {("p1", "parent"), ("p2", "parent")}
    assert all(r["iteration"] == 2 for r in rows.values())


def test_length_and_degeneration():
    _, _, rows = run()
    assert rows[("c4", "candidate")]["degenerate"] == "empty"
    assert rows[("c5", "candidate")]["degenerate"].startswith("repetition")
    assert rows[("c6", "candidate")]["degenerate"] == "no end (cut off at the token limit)"
    for cid in ("c4", "c5", "c6"):
        assert rows[(cid, "candidate")]["length"] == -math.inf
    for cid in ("c1", "c2", "c3", "c7"):
        row = rows[(cid, "candidate")]
        assert row["degenerate"] is None
        assert row["length"] == row["n_tokens"] == len(dict((i.candidate_id, i.text) for i in ITEMS)[cid].split())
    assert rows[("c5", "candidate")]["n_tokens"] == 11  # counted even when degenerate
    # an original example without rationale is a valid, empty parent
    p2 = rows[("p2", "parent")]
    assert p2["degenerate"] is None and p2["length"] == 0.0 and p2["n_tokens"] == 0


def test_likelihood_is_with_minus_without_rationale():
    engine, _, rows = run()
    expected = {"c1": 0.5, "c2": 1.25, "c3": -0.75, "p1": 0.25, "c4": 0.0, "c7": 2.0}
    for (cid, _role), row in rows.items():
        base = -2.0 if row["example_id"] == "e1" else -3.0
        assert row["logp_without"] == base
        assert row["logp_with_rationale"] == pytest.approx(base + GAINS.get(dict((i.candidate_id, i.text) for i in ITEMS)[cid], 0.0))
        assert row["likelihood"] == pytest.approx(row["logp_with_rationale"] - row["logp_without"])
        if cid in expected:
            assert row["likelihood"] == pytest.approx(expected[cid])
    assert rows[("p2", "parent")]["likelihood"] == 0.0  # empty parent: exactly 0
    # one batch: a baseline per example (empty think block) + one request per item, with the adapter
    assert len(engine.logprob_calls) == 1
    requests, adapter = engine.logprob_calls[0]
    assert adapter == "ckpt/adapter"
    assert len(requests) == len(REFS) + len(ITEMS)
    assert requests[0] == (likelihood_context(engine, REFS["e1"], ""), "The answer is 42.")
    assert requests[0][0] == "<user>What is 6 * 7?</user><assistant><think></think>\n"
    assert requests[2] == (engine.render_chat(prompts.answer_messages("What is 6 * 7?")) + f"<think>{E1_TEXTS['c1']}</think>\n",
                           "The answer is 42.")


def test_consistency_picks_the_medoid_and_scores_parents_against_candidates():
    _, _, rows = run()
    texts = list(E1_TEXTS.values())
    cons = {cid: rows[(cid, "candidate")]["consistency"] for cid in E1_TEXTS}
    assert max(cons, key=cons.get) == "c2"  # the middle text shares most with both others
    assert cons["c2"] == pytest.approx((selectors.similarity(texts[1], texts[0]) + selectors.similarity(texts[1], texts[2])) / 2)
    assert cons["c1"] == pytest.approx((selectors.similarity(texts[0], texts[1]) + selectors.similarity(texts[0], texts[2])) / 2)
    # consistency stays within an example: e2's candidates only see e2's
    e2_texts = [i.text for i in E2_ITEMS]
    medoid_scores = [selectors.consistency_to(t, e2_texts[:i] + e2_texts[i + 1:]) for i, t in enumerate(e2_texts)]
    assert [rows[(i.candidate_id, "candidate")]["consistency"] for i in E2_ITEMS] == medoid_scores
    assert rows[("p1", "parent")]["consistency"] == pytest.approx(selectors.consistency_to("six sevens", texts))
    assert 0 < rows[("p1", "parent")]["consistency"] < 1


def test_a_parent_sharing_an_id_with_a_candidate_keeps_its_own_scores():
    items = [Scorable("same", "e1", "candidate", E1_TEXTS["c1"], "stop"), Scorable("c2", "e1", "candidate", E1_TEXTS["c2"], "stop"),
             Scorable("same", "e1", "parent", "six sevens", "stop")]
    _, table, rows = run(items)
    assert table.num_rows == 3
    assert rows[("same", "parent")]["consistency"] == pytest.approx(selectors.consistency_to("six sevens", [E1_TEXTS["c1"], E1_TEXTS["c2"]]))
    assert rows[("same", "candidate")]["consistency"] == pytest.approx(selectors.similarity(E1_TEXTS["c1"], E1_TEXTS["c2"]))


def test_lone_candidate_and_empty_input():
    _, _, rows = run([Scorable("c1", "e1", "candidate", E1_TEXTS["c1"], "stop")])
    assert rows[("c1", "candidate")]["consistency"] == 0.0
    engine, table, _ = run([])
    assert table.num_rows == 0 and table.schema == score_schema() and engine.logprob_calls == []


def test_with_the_tiny_real_model():
    from tiny_model import tiny_model_dir

    from srlm.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir(), engine_settings(batch_size=8))
    refs = {"a": Reference("Ada has 3 apples and gets 4 more. How many apples does Ada have?", "", "Ada has 7 apples."),
            "b": Reference("Describe a quiet river in one sentence.", "", "The quiet river is calm.")}
    items = [
        Scorable("a1", "a", "candidate", "Ada starts with 3. 3 + 4 = 7.", "stop"),
        Scorable("a2", "a", "candidate", "3 + 4 = 7.", "stop"),
        Scorable("a3", "a", "candidate", "apples apples apples apples apples apples", "stop"),
        Scorable("b1", "b", "candidate", "The river is quiet and green.", "stop"),
        Scorable("pa", "a", "parent", "", "stop"),
        Scorable("pb", "b", "parent", "A river.", "stop"),
    ]
    table = score(items, refs, engine, iteration=1, arm="srlm", adapter=None, ngram=2, max_repeated_fraction=0.3)
    rows = {r["candidate_id"]: r for r in table.to_pylist()}
    assert table.num_rows == 6 and table.schema == score_schema()
    assert rows["a3"]["length"] == -math.inf and rows["a3"]["degenerate"].startswith("repetition")
    for cid in ("a1", "a2", "b1", "pb"):
        r = rows[cid]
        assert r["length"] == r["n_tokens"] == engine.count_tokens([dict((i.candidate_id, i.text) for i in items)[cid]])[0] > 0
    for r in rows.values():
        assert r["logp_with_rationale"] < 0 and r["logp_without"] < 0
        assert math.isfinite(r["likelihood"]) and r["likelihood"] == pytest.approx(r["logp_with_rationale"] - r["logp_without"])
        assert 0.0 <= r["consistency"] <= 1.0
    assert rows["pa"]["likelihood"] == pytest.approx(0.0, abs=1e-5)
    assert rows["a1"]["logp_without"] == rows["a2"]["logp_without"] == rows["pa"]["logp_without"]
    assert rows["a1"]["logp_with_rationale"] != rows["a2"]["logp_with_rationale"]
    # the real mean log-prob of y given x and the rationale, as the engine computes it directly
    direct = engine.logprobs([(likelihood_context(engine, refs["a"], items[0].text), refs["a"].output)])[0]
    assert rows["a1"]["logp_with_rationale"] == pytest.approx(direct.mean, abs=1e-4)
    assert rows["b1"]["consistency"] == 0.0  # the only candidate of its example
