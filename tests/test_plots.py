"""Plots: every picture is a decodable PNG, with data and without; the score summary's numbers."""

import base64
import io
import math

import polars as pl
import pytest
from PIL import Image

from srlm import plots
from srlm.registry import selector_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

EXAMPLES = pl.DataFrame(
    {
        "iteration": [0, 0, 0, 1, 1, 2],
        "task": ["answer", "answer", "enrich", "answer", "answer", "answer"],
        "rationale": [None, "short one", "catalyst text not counted", "a longer  rationale\nhere", "", "the longest rationale of them all"],
    }
)
SCORES = pl.DataFrame(
    {
        "role": ["candidate", "candidate", "candidate", "parent"],
        "length": [10.0, float("-inf"), 30.0, 5.0],
        "likelihood": [0.1, -0.2, None, 0.0],
        "consistency": [0.5, 0.4, 0.9, float("nan")],
    }
)
SUMMARY = pl.DataFrame({
    "arm": ["base", "srlm", "srlm/likelihood", "sft"] * 2,
    "iteration": [-1, 0, 1, 0] * 2,
    "benchmark": ["gsm8k"] * 4 + ["mmlu"] * 4,
    "accuracy": [0.1, 0.2, 0.25, 0.15, 0.3, 0.3, 0.35, 0.32],
}).with_columns(accuracy_low=pl.col("accuracy") - 0.05, accuracy_high=pl.col("accuracy") + 0.05)
SCALING = pl.DataFrame({"arm": ["srlm", "srlm", "srlm/likelihood", "srlm/likelihood"], "iteration": [0, 0, 1, 1],
                        "benchmark": ["gsm8k"] * 4, "n_samples": [1, 4, 1, 4], "accuracy": [0.2, 0.3, 0.25, 0.4]})

CASES = {
    "rationale_lengths": (plots.rationale_lengths, EXAMPLES),
    "score_distributions": (plots.score_distributions, SCORES),
    "accuracy_by_iteration": (plots.accuracy_by_iteration, SUMMARY),
    "accuracy_vs_samples": (plots.accuracy_vs_samples, SCALING),
}


def decoded(png: bytes) -> Image.Image:
    assert png.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel: a truncated file fails here
    assert image.format == "PNG" and image.width > 100 and image.height > 100
    return image


@pytest.mark.parametrize("name", CASES)
def test_each_plot_is_a_png(name):
    plot, df = CASES[name]
    decoded(plot(df))


@pytest.mark.parametrize("name", CASES)
def test_each_plot_draws_an_empty_table(name):
    plot, df = CASES[name]
    decoded(plot(df.clear()))


def test_a_plot_shows_its_data():
    one = decoded(plots.accuracy_by_iteration(SUMMARY)).convert("L")
    other = decoded(plots.accuracy_by_iteration(SUMMARY.with_columns(pl.col("accuracy", "accuracy_low", "accuracy_high") * 2))).convert("L")
    assert one.tobytes() != other.tobytes()


def test_markdown_image_embeds_the_png():
    png = plots.accuracy_vs_samples(SCALING)
    md = plots.markdown_image(png, "accuracy vs samples")
    prefix = "![accuracy vs samples](data:image/png;base64,"
    assert md.startswith(prefix) and md.endswith(")")
    assert base64.b64decode(md[len(prefix):-1]) == png


def test_rationale_words_count_words_of_answering_examples_only():
    words = plots.rationale_words(EXAMPLES)
    assert words.to_dict(as_series=False) == {"iteration": [0, 0, 1, 1, 2], "n_words": [0, 2, 4, 0, 6]}


def test_iteration_labels():
    assert [plots.iteration_label(t) for t in (-1, 0, 3)] == ["base", "M0", "M3"]


def test_score_summary_over_finite_candidate_scores():
    summary = plots.score_summary(SCORES)
    assert summary["length/mean"] == 20.0
    assert summary["length/p10"] == pytest.approx(12.0)
    assert summary["length/median"] == 20.0
    assert summary["length/p90"] == pytest.approx(28.0)
    assert summary["length/degenerate"] == 1  # -inf; the parent's 5.0 is not a candidate
    assert summary["likelihood/mean"] == pytest.approx(-0.05)
    assert summary["likelihood/degenerate"] == 1  # null
    assert summary["consistency/median"] == pytest.approx(0.5)
    assert summary["consistency/degenerate"] == 0  # the NaN is the parent's
    assert set(summary) == {f"{s}/{stat}" for s in selector_names() for stat in ("mean", "p10", "median", "p90", "degenerate")}


def test_score_summary_without_finite_scores_has_no_statistics():
    summary = plots.score_summary(SCORES.with_columns(pl.lit(-math.inf).alias("length")))
    assert summary["length/degenerate"] == 3
    assert [summary[f"length/{s}"] for s in ("mean", "p10", "median", "p90")] == [None] * 4
    empty = plots.score_summary(SCORES.clear())
    assert empty["likelihood/mean"] is None and empty["likelihood/degenerate"] == 0


def test_each_arm_is_drawn_along_its_chain():
    import matplotlib.pyplot as plt

    drawn = []
    original = plt.Axes.errorbar
    try:
        plt.Axes.errorbar = lambda self, x, y, **kw: drawn.append((kw["label"], [round(v) for v in x], y)) or original(self, x, y, **kw)
        plots.accuracy_by_iteration(SUMMARY.filter(pl.col("benchmark") == "gsm8k"))
    finally:
        plt.Axes.errorbar = original
    # srlm/likelihood passes through the base model and the shared M0; sft starts from the base model
    assert drawn == [("sft", [-1, 0], [0.1, 0.15]), ("srlm/likelihood", [-1, 0, 1], [0.1, 0.2, 0.25])]
