"""`srlm report`: one HTML page with the summary tables and the PNG plots, from a hand-made warehouse."""

import io

import polars as pl
import pytest
from PIL import Image

from assets import schemas
from conftest import put_table as put
from srlm import plots, report
from srlm.cli import main
from srlm.warehouse import refresh_catalog

ITERATIONS = 2


def put_training(home, t: int) -> None:
    rationale = " ".join(["step"] * (3 * t))  # iter_0's rationales are empty: D0 has none
    rows = [{"iteration": t, "task": "answer", "example_id": e, "rationale": rationale} for e in ("e1", "e2")]
    put(home, (f"iter_{t}", "training_examples"), schemas.TRAINING_EXAMPLES, rows + [{"iteration": t, "task": "enrich", "example_id": "k1"}])


def put_iteration(home, t: int) -> None:
    put(home, (f"iter_{t}", "checkpoint"), schemas.CHECKPOINTS, [{"checkpoint_id": f"M{t}-abc", "iteration": t, "train_loss": 1.5 - t / 10}])
    put_training(home, t)
    if t == 0:
        return
    cands = [{"candidate_id": f"c{t}{i}", "example_id": "e1", "iteration": t} for i in range(3)]
    put(home, (f"iter_{t}", "candidates"), schemas.CANDIDATES, cands)
    scored = [{"candidate_id": c["candidate_id"], "example_id": "e1", "iteration": t, "role": "candidate",
               "length": 10.0 * i, "likelihood": 0.1 * i, "consistency": 0.5} for i, c in enumerate(cands)]
    put(home, (f"iter_{t}", "scores"), schemas.SCORES, scored + [{"candidate_id": "e1", "example_id": "e1", "iteration": t, "role": "parent"}])
    put(home, (f"iter_{t}", "selected"), schemas.SELECTED,
        [{"example_id": "e1", "iteration": t, "candidate_id": f"c{t}2", "selector": "length", "score": 20.0}])


def put_eval(home) -> None:
    summary = [{"checkpoint_id": f"M{t}-abc", "iteration": t, "benchmark": "gsm8k", "questions": 4, "accuracy": 0.25}
               for t in range(-1, ITERATIONS + 1)]
    put(home, ("eval", "summary"), schemas.EVAL_SUMMARY, summary)
    scaling = [{"checkpoint_id": f"M{t}-abc", "iteration": t, "benchmark": "gsm8k", "n_samples": n, "accuracy": 0.25}
               for t in range(-1, ITERATIONS + 1) for n in (1, 4)]
    put(home, ("eval", "scaling"), schemas.EVAL_SCALING, scaling)


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    put(home, ("model", "base"), schemas.CHECKPOINTS, [{"checkpoint_id": "base-123", "iteration": -1}])
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
    for stem, heading, *_ in report.PLOTS:
        assert f'<img src="{stem}.png" alt="{heading}">' in text
        width, height = png_size(page.parent / f"{stem}.png")
        assert width > 100 and height > 100
    for heading, *_ in report.TABLES:
        assert f"<h2>{heading}</h2>" in text
    assert "not materialized yet" not in text
    for t in range(ITERATIONS + 1):
        assert f"<td>M{t}-abc</td>" in text  # the checkpoints table
    # selection per iteration: iteration 2, 1 example, 3 candidates, 1 selected, by length
    assert "<tr><td>2</td><td>1</td><td>3</td><td>1</td><td>length</td><td>20.0</td></tr>" in text


def test_the_page_goes_to_the_home_by_default(home):
    assert report.build_report(home) == home / "report" / "index.html"
    assert (home / "report" / "selector_scores.png").is_file()


def test_rationale_lengths_cover_every_iteration(home):
    [(_, _, _, query, plot)] = [p for p in report.PLOTS if p[0] == "rationale_lengths"]
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
    assert "not materialized yet: eval.summary" in text and "not materialized yet: candidates, selected" in text
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
