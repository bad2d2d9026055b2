"""`srlm report`: one static HTML page of an experiment, built from the warehouse, with the PNGs written
next to it. It opens with the answer (did each SRLM arm beat each baseline, where, with what confidence),
then shows the method at work (candidates against their parents, selector agreement, examples), then the
tables and plots."""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from srlm import plots
from srlm.registry import selector_names
from srlm.sqlfiles import sql_text
from srlm.warehouse import catalog_storage, list_tables, query_read_only


def headline_query() -> str:
    """sql/comparison_headline.sql over the warehouse's eval.comparison view."""
    return f"WITH comparison AS (SELECT * FROM eval.comparison) {sql_text('comparison_headline')}"


VERDICTS_QUERY = """
select checkpoint, reference, benchmark, n_samples as N, metric, questions,
       round(100 * difference, 1) as diff_points, round(100 * ci_low, 1) as ci_low, round(100 * ci_high, 1) as ci_high,
       round(p_value, 4) as mcnemar_p, verdict, round(100 * min_detectable_difference, 1) as detectable_points
from eval.comparison order by arm, iteration, relation, benchmark, n_samples, metric
"""


def report_plots() -> list[tuple]:
    """(file stem, title, the views it needs, query, plot function) of each plot; the score plot shows every
    registered selector."""
    return [
        ("rationale_lengths", "Rationale length by iteration", {"training_examples"},
         "select iteration, task, rationale from training_examples", plots.rationale_lengths),
        ("selector_scores", "Selector score distributions (all iterations)", {"scores"},
         f"select role, {', '.join(selector_names())} from scores", plots.score_distributions),
        ("accuracy_by_iteration", "Accuracy by arm and iteration, with 95% intervals", {"eval.summary"},
         "select arm, iteration, benchmark, accuracy, accuracy_low, accuracy_high from eval.summary", plots.accuracy_by_iteration),
        ("accuracy_vs_samples", "Accuracy vs number of samples (majority vote), per arm", {"eval.scaling"},
         "select arm, iteration, benchmark, n_samples, accuracy from eval.scaling", plots.accuracy_vs_samples),
    ]


TABLES = [
    ("Checkpoints", {"checkpoints"},
     "select checkpoint_id, arm, iteration, parent_checkpoint_id, trained_on, train_loss from checkpoints order by iteration, arm"),
    ("Selection per arm and iteration", {"selected"},
     "select arm, iteration, selector, count(*) as selected, round(avg(score), 4) as mean_selected_score, "
     "round(avg(parent_score), 4) as mean_parent_score from selected group by all order by arm, iteration"),
    ("Evaluation summary", {"eval.summary"},
     "select checkpoint_id, arm, benchmark, protocol, questions, round(accuracy, 3) as accuracy, "
     "round(accuracy_low, 3) as low, round(accuracy_high, 3) as high, round(accuracy_norm, 3) as accuracy_norm, "
     "round(accuracy_at_max_samples, 3) as accuracy_at_max_samples, round(delta_base, 3) as delta_base "
     "from eval.summary order by benchmark, iteration, arm"),
]

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #eee; }
.missing { color: #888; font-style: italic; }
"""


def frame(home: Path, query: str) -> pl.DataFrame:
    columns, rows = query_read_only(home, query)
    return pl.DataFrame(rows, schema=columns, orient="row", infer_schema_length=None)


def available_views(home: Path) -> set[str]:
    _, rows = query_read_only(home, "select table_schema, table_name from information_schema.tables")
    return {name if schema == "main" else f"{schema}.{name}" for schema, name in rows}


def html_table(df: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in df.iter_rows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def build_report(home: str | Path, out_dir: str | Path | None = None, title: str = "SRLM experiment") -> Path:
    """Write index.html and the PNGs into out_dir (default $SRLM_HOME/report); returns the HTML path.
    Sections whose tables are not materialized yet say so instead of failing."""
    home = Path(home)
    if not list_tables(catalog_storage(home)):
        raise FileNotFoundError(f"nothing materialized under {home} yet: run `srlm run` first")
    out = Path(out_dir) if out_dir else home / "report"
    out.mkdir(parents=True, exist_ok=True)
    views = available_views(home)
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>Warehouse: <code>{html.escape(str(home))}</code></p>"]
    parts += _answer(home, views) + _method_at_work(home, views)
    for heading, needs, query in TABLES:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(html_table(frame(home, query)) if needs <= views else _missing(needs - views))
    for stem, heading, needs, query, plot in report_plots():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if not needs <= views:
            parts.append(_missing(needs - views))
            continue
        (out / f"{stem}.png").write_bytes(plot(frame(home, query)))
        parts.append(f'<img src="{stem}.png" alt="{html.escape(heading)}">')
    page = out / "index.html"
    tmp = page.with_suffix(".html.tmp")
    tmp.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    tmp.replace(page)
    return page


def _answer(home: Path, views: set[str]) -> list[str]:
    """The report's opening: one sentence per SRLM-arm-vs-baseline verdict, then every comparison."""
    parts = ["<h2>Did SRLM beat the baselines?</h2>"]
    if "eval.comparison" not in views:
        return parts + [_missing({"eval.comparison"})]
    sentences = frame(home, headline_query())["sentence"].to_list()
    parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in sentences) + "</ul>" if sentences
                 else "<p class='missing'>no SRLM arm and baseline evaluated on the same questions yet</p>")
    parts += [
        "<p>A verdict follows the 95% paired-bootstrap interval of the difference: <i>better</i> or <i>worse</i> when "
        "it excludes 0, else <i>no detectable difference</i>; <i>detectable_points</i> is the smallest difference "
        "this number of questions detects with 80% power.</p>",
        "<h3>Every comparison</h3>",
        html_table(frame(home, VERDICTS_QUERY)),
    ]
    return parts


def _method_at_work(home: Path, views: set[str]) -> list[str]:
    """Per generation: candidates against their parents, skill markers, likelihood gains, selector agreement,
    and rewritten rationales beside their parents."""
    parts = ["<h2>The method at work</h2>"]
    needs = {"candidates", "scores", "selector_choices", "training_examples"}
    if not needs <= views:
        return parts + [_missing(needs - views)]
    figures = frame(home, sql_text("enrichment"))
    parts.append(html_table(figures))
    examples = frame(home, sql_text("enrichment_examples"))
    for (arm, iteration), group in examples.group_by(["arm", "iteration"], maintain_order=True):
        parts.append(f"<h3>{html.escape(str(arm))}, iteration {iteration}: rewritten rationales beside their parents</h3>")
        parts.append(html_table(group.select("example_id", "parent", "candidate", "kept_by")))
    return parts


def _missing(views: set[str]) -> str:
    return f"<p class='missing'>not materialized yet: {html.escape(', '.join(sorted(views)))}</p>"
