"""The experiment's pictures as PNG bytes (matplotlib, no display needed): the assets attach them to their
metadata and `srlm report` gathers them into one HTML page.

Each function takes a small polars frame with the columns it names and returns PNG bytes.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import polars as pl

from srlm.arms import leaf_arms, lineage
from srlm.registry import ANSWER, CANDIDATE, PARENT, selector_names

SCORE_QUANTILES = {"p10": 0.1, "median": 0.5, "p90": 0.9}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _legend(ax, **kwargs) -> None:
    """A legend only where something was drawn (an empty legend is a matplotlib warning, not a picture)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kwargs)


def _nothing_yet(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that shows the picture inline (Dagster renders data URIs in markdown metadata)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def iteration_label(iteration: int) -> str:
    return "base" if iteration < 0 else f"M{iteration}"


def rationale_words(examples: pl.DataFrame) -> pl.DataFrame:
    """Rationale length in words of the answering examples. Columns in: iteration, task, rationale."""
    words = pl.col("rationale").fill_null("").str.count_matches(r"\S+")  # any whitespace separates words
    return examples.filter(pl.col("task") == ANSWER).select("iteration", words.alias("n_words"))


def rationale_lengths(examples: pl.DataFrame) -> bytes:
    """Distribution of rationale length (words) per iteration. Columns: iteration, task, rationale."""
    df = rationale_words(examples)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    iterations = sorted(df["iteration"].unique().to_list())
    if iterations:
        data = [df.filter(pl.col("iteration") == t)["n_words"].to_list() for t in iterations]
        ax.boxplot(data, tick_labels=[f"iter_{t}" for t in iterations], showmeans=True)
    else:
        _nothing_yet(ax, "answering examples")
    ax.set_ylabel("rationale length (words)")
    ax.set_title("Rationale length by iteration (answering examples)")
    return _png(fig)


def score_distributions(scores: pl.DataFrame) -> bytes:
    """Histogram of each selector's score, candidates vs the parent rationales they enrich.
    Columns: role and one per registered selector (non-finite scores are left out and counted)."""
    names = selector_names()
    fig, axes = plt.subplots(1, len(names), figsize=(10, 3), squeeze=False)
    for ax, selector in zip(axes[0], names):
        for role, colour in ((CANDIDATE, "tab:blue"), (PARENT, "tab:orange")):
            values = scores.filter(pl.col("role") == role)[selector]
            finite = values.filter(values.is_finite())
            if finite.len():
                ax.hist(finite.to_list(), bins=20, alpha=0.6, color=colour, label=f"{role} ({finite.len()})")
            dropped = values.len() - finite.len()
            if dropped:
                ax.text(0.02, 0.92 if role == CANDIDATE else 0.82, f"{role}: {dropped} non-finite",
                        transform=ax.transAxes, fontsize=7)
        ax.set_title(selector)
        _legend(ax)
    fig.suptitle("Selector scores", y=1.04)
    return _png(fig)


def score_summary(scores: pl.DataFrame) -> dict[str, float | int | None]:
    """Per selector, over the candidate rows: mean, p10, median and p90 of the finite scores, and how many
    scores are not finite (degenerate text scores -inf; null and NaN count too). Flat keys such as
    "likelihood/p90", ready for asset metadata; a statistic with no finite score is None.
    Columns: role and one per registered selector."""
    candidates = scores.filter(pl.col("role") == CANDIDATE)
    summary: dict[str, float | int | None] = {}
    for selector in selector_names():
        values = candidates[selector]
        finite = values.filter(values.is_finite())
        summary[f"{selector}/mean"] = finite.mean()
        for name, q in SCORE_QUANTILES.items():
            summary[f"{selector}/{name}"] = finite.quantile(q, "linear")
        summary[f"{selector}/degenerate"] = values.len() - finite.len()
    return summary


def _panels(benchmarks: list[str], height: float = 3.2):
    names = benchmarks or ["(none)"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), height), squeeze=False)
    return fig, list(zip(axes[0], names))


def accuracy_by_iteration(summary: pl.DataFrame) -> bytes:
    """Accuracy per arm across its chain (base, then M0 or sft, then M1, M2 ...), one panel per benchmark,
    with 95% interval bars. Columns: arm, iteration, benchmark, accuracy, accuracy_low, accuracy_high."""
    arms = leaf_arms(summary["arm"].unique().to_list()) if not summary.is_empty() else []
    fig, panels = _panels(sorted(summary["benchmark"].unique().to_list()))
    for ax, benchmark in panels:
        part = summary.filter(pl.col("benchmark") == benchmark)
        for k, arm in enumerate(arms):
            line = part.filter(pl.col("arm").is_in(list(lineage(arm)))).sort("iteration")
            x = [t + 0.06 * (k - (len(arms) - 1) / 2) for t in line["iteration"].to_list()]  # side by side
            y = line["accuracy"].to_list()
            # Wilson bounds hug 0 and 1 up to float error: clamp, matplotlib refuses negative error bars
            err = [[max(a - lo, 0.0) for a, lo in zip(y, line["accuracy_low"].to_list())],
                   [max(hi - a, 0.0) for a, hi in zip(y, line["accuracy_high"].to_list())]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
        ticks = sorted(part["iteration"].unique().to_list())
        ax.set_xticks(ticks, [iteration_label(t) for t in ticks])
        ax.set_ylim(0, 1)
        ax.set_title(benchmark)
        _legend(ax)
    if summary.is_empty():
        _nothing_yet(panels[0][0], "evaluation")
    panels[0][0].set_ylabel("accuracy (N = 1), 95% interval")
    return _png(fig)


def accuracy_vs_samples(scaling: pl.DataFrame) -> bytes:
    """Majority-vote accuracy vs the number of sampled answers N, one panel per benchmark, one line per
    checkpoint (its arm and iteration). Columns: arm, iteration, benchmark, n_samples, accuracy."""
    fig, panels = _panels(sorted(scaling["benchmark"].unique().to_list()), height=3)
    for ax, benchmark in panels:
        part = scaling.filter(pl.col("benchmark") == benchmark)
        for (arm, t), line in sorted(part.group_by(["arm", "iteration"]), key=lambda g: (g[0][1], g[0][0])):
            line = line.sort("n_samples")
            ax.plot(line["n_samples"].to_list(), line["accuracy"].to_list(), marker="o", label=f"{iteration_label(t)} {arm}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.set_xlabel("samples N (majority vote)")
        ax.set_title(benchmark)
        _legend(ax)
    panels[0][0].set_ylabel("accuracy")
    return _png(fig)
