"""`srlm report`: one HTML page with the summary tables and the PNG plots, from a hand-made warehouse."""

import io

import polars as pl
import pytest
from conftest import put_table as put
from PIL import Image

from srlm import plots, report, schemas
from srlm.cli import main
from srlm.warehouse import refresh_catalog

ITERATIONS = 2
ARM = "srlm/likelihood"


def schema_of(t: int) -> str:
    return "srlm_iter_0" if t == 0 else f"srlm_likelihood_iter_{t}"


def put_training(home, t: int) -> None:
    rationale = " ".join(["step"] * (3 * t))  # M0's rationales are empty: D0 has none
    arm = "srlm" if t == 0 else ARM
    rows = [{"arm": arm, "iteration": t, "task": "answer", "example_id": e, "rationale_id": f"r{t}{e}", "rationale": rationale}
            for e in ("e1", "e2")]
    put(home, (schema_of(t), "training_examples"), schemas.TRAINING_EXAMPLES, rows + [{"arm": arm, "iteration": t, "task": "enrich", "example_id": "k1"}])


def put_iteration(home, t: int) -> None:
    arm = "srlm" if t == 0 else ARM
    put(home, (schema_of(t), "checkpoint"), schemas.CHECKPOINTS, [{"checkpoint_id": f"M{t}-abc", "arm": arm, "iteration": t, "train_loss": 1.5 - t / 10}])
    put_training(home, t)
    if t == 0:
        return
    gen, gen_arm = ("srlm_iter_1", "srlm") if t == 1 else (schema_of(t), ARM)
    cands = [{"candidate_id": f"c{t}{i}", "arm": gen_arm, "example_id": "e1", "iteration": t, "parent_id": f"r{t - 1}e1",
              "text": f"[detail] rewritten {i}", "skills": "detail" if i else ""} for i in range(3)]
    put(home, (gen, "candidates"), schemas.CANDIDATES, cands)
    scored = [{"candidate_id": c["candidate_id"], "arm": gen_arm, "example_id": "e1", "iteration": t, "role": "candidate",
               "length": 10.0 * i, "likelihood": 0.1 * i, "consistency": 0.5, "n_tokens": 10 * i} for i, c in enumerate(cands)]
    parent = {"candidate_id": f"r{t - 1}e1", "arm": gen_arm, "example_id": "e1", "iteration": t, "role": "parent", "likelihood": 0.05, "n_tokens": 5}
    put(home, (gen, "scores"), schemas.scores_columns(), scored + [parent])
    choice = {"example_id": "e1", "iteration": t, "candidate_id": f"c{t}2", "score": 20.0, "parent_score": 5.0}
    put(home, (gen, "selector_choices"), schemas.SELECTED, [{**choice, "arm": gen_arm, "selector": s} for s in ("length", "likelihood", "consistency")])
    put(home, (schema_of(t), "selected"), schemas.SELECTED, [{**choice, "arm": ARM, "selector": "likelihood"}])


def put_eval(home) -> None:
    chain = [("base", -1, "base-123")] + [("srlm" if t == 0 else ARM, t, f"M{t}-abc") for t in range(ITERATIONS + 1)] + [("sft", 0, "sft-1")]
    summary = [{"checkpoint_id": c, "arm": a, "iteration": t, "benchmark": "gsm8k", "questions": 4, "accuracy": 0.25,
                "accuracy_low": 0.05, "accuracy_high": 0.7} for a, t, c in chain]
    put(home, ("eval", "summary"), schemas.EVAL_SUMMARY, summary)
    scaling = [{"checkpoint_id": c, "arm": a, "iteration": t, "benchmark": "gsm8k", "n_samples": n, "accuracy": 0.25}
               for a, t, c in chain for n in (1, 4)]
    put(home, ("eval", "scaling"), schemas.EVAL_SCALING, scaling)
    verdict = {"checkpoint_id": "M2-abc", "checkpoint": "M2 srlm/likelihood", "arm": ARM, "iteration": 2, "reference": "sft",
               "benchmark": "gsm8k", "n_samples": 1, "metric": "acc", "questions": 4, "difference": 0.0, "ci_low": -0.5,
               "ci_high": 0.5, "p_value": 1.0, "verdict": "no detectable difference", "min_detectable_difference": 0.9}
    put(home, ("eval", "comparison"), schemas.EVAL_COMPARISON, [
        {**verdict, "relation": "vs_sft", "sentence": "M2 srlm/likelihood shows no detectable difference from sft on gsm8k."},
        {**verdict, "relation": "vs_previous", "reference": "M1 srlm/likelihood", "sentence": "not a headline"},
        {**verdict, "relation": "vs_sft", "iteration": 1, "checkpoint": "M1 srlm/likelihood", "sentence": "not the last iteration"},
    ])


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    put(home, ("model", "base"), schemas.CHECKPOINTS, [{"checkpoint_id": "base-123", "arm": "base", "iteration": -1}])
    for t in range(ITERATIONS + 1):
        put_iteration(home, t)
    put_eval(home)
    refresh_catalog(home)
    return home


def png_size(path) -> tuple[int, int]:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    assert image.format == "PNG"
    return image.size


def test_the_page_shows_every_table_and_plot(home, tmp_path):
    page = report.build_report(home, tmp_path / "out", title="Micro <run>")
    assert page == tmp_path / "out" / "index.html"
    text = page.read_text()
    assert "<title>Micro &lt;run&gt;</title>" in text
    for stem, heading, *_ in report.report_plots():
        assert f'<img src="{stem}.png" alt="{heading}">' in text
        width, height = png_size(page.parent / f"{stem}.png")
        assert width > 100 and height > 100
    for heading, *_ in report.TABLES:
        assert f"<h2>{heading}</h2>" in text
    assert "not materialized yet" not in text
    for t in range(ITERATIONS + 1):
        assert f"<td>M{t}-abc</td>" in text  # the checkpoints table
    # selection per arm and iteration: srlm/likelihood at iteration 2 kept 1 by likelihood, score 20 over 5
    assert "<tr><td>srlm/likelihood</td><td>2</td><td>likelihood</td><td>1</td><td>20.0</td><td>5.0</td></tr>" in text


def test_the_page_opens_with_the_answer(home, tmp_path):
    text = report.build_report(home, tmp_path / "out").read_text()
    answer = text.index("<h2>Did SRLM beat the baselines?</h2>")
    assert answer < text.index("<h2>The method at work</h2>") < text.index("<h2>Checkpoints</h2>")
    # only the last SRLM checkpoint against the baselines leads; every comparison follows in the table
    assert "<li>M2 srlm/likelihood shows no detectable difference from sft on gsm8k.</li>" in text
    assert "<li>not a headline</li>" not in text and "<li>not the last iteration</li>" not in text


def test_the_method_at_work_section(home, tmp_path):
    text = report.build_report(home, tmp_path / "out").read_text()
    section = text[text.index("<h2>The method at work</h2>"):text.index("<h2>Checkpoints</h2>")]
    # iteration 1 (shared srlm) and 2 (the arm's own): 3 candidates of 0, 10, 20 tokens against a 5-token parent,
    # two of three mark a skill, all three selectors keep the same candidate
    assert "<td>srlm</td><td>1</td><td>1</td><td>3</td><td>10.0</td><td>5.0</td><td>0.667</td><td>0.667</td>" in section
    assert "rewritten rationales beside their parents" in section and "[detail] rewritten 2" in section


def test_the_page_goes_to_the_home_by_default(home):
    assert report.build_report(home) == home / "report" / "index.html"
    assert (home / "report" / "selector_scores.png").is_file()


def test_rationale_lengths_cover_every_iteration(home):
    [(_, _, _, query, plot)] = [p for p in report.report_plots() if p[0] == "rationale_lengths"]
    assert plot is plots.rationale_lengths
    words = plots.rationale_words(report.frame(home, query))
    per_iteration = dict(words.group_by("iteration").agg(pl.col("n_words").max()).iter_rows())
    assert per_iteration == {t: 3 * t for t in range(ITERATIONS + 1)}


def test_sections_not_materialized_yet_say_so(tmp_path):
    home = tmp_path / "home"
    put_training(home, 0)
    refresh_catalog(home)
    text = report.build_report(home).read_text()
    assert '<img src="rationale_lengths.png"' in text
    assert "not materialized yet: eval.summary" in text and "not materialized yet: selected" in text
    assert "not materialized yet: eval.comparison" in text
    assert sorted(p.name for p in (home / "report").glob("*.png")) == ["rationale_lengths.png"]


def test_nothing_materialized_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `srlm run` first"):
        report.build_report(tmp_path)


def test_html_table_escapes_cells():
    html = report.html_table(pl.DataFrame({"a<b": ["<x>", None]}))
    assert html == "<table><tr><th>a&lt;b</th></tr><tr><td>&lt;x&gt;</td></tr><tr><td></td></tr></table>"


def test_srlm_report_command(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SRLM_HOME", str(home))
    assert main(["report", "--out", str(tmp_path / "site")]) == 0
    assert f"report written to {tmp_path / 'site' / 'index.html'}" in capsys.readouterr().out
    monkeypatch.setenv("SRLM_HOME", str(tmp_path / "empty"))
    assert main(["report"]) == 1
    assert "nothing materialized" in capsys.readouterr().err
