"""`srlm report`: one static HTML page of an experiment (summary tables and the PNG plots), built from
the warehouse, with the PNGs written next to it."""

from __future__ import annotations

import html
from pathlib import Path

import polars as pl

from srlm import plots
from srlm.warehouse import list_tables, query_read_only

# (file stem, title, the views it needs, query, plot function)
PLOTS = [
    ("rationale_lengths", "Rationale length by iteration", {"training_examples"},
     "select iteration, task, rationale from training_examples", plots.rationale_lengths),
    ("selector_scores", "Selector score distributions (all iterations)", {"scores"},
     "select role, length, likelihood, consistency from scores", plots.score_distributions),
    ("accuracy_by_iteration", "Accuracy by checkpoint and benchmark", {"eval.summary"},
     "select iteration, benchmark, accuracy from eval.summary", plots.accuracy_by_iteration),
    ("accuracy_vs_samples", "Accuracy vs number of samples (majority vote)", {"eval.scaling"},
     "select iteration, benchmark, n_samples, accuracy from eval.scaling", plots.accuracy_vs_samples),
]

TABLES = [
    ("Checkpoints", {"checkpoints"},
     "select checkpoint_id, iteration, parent_checkpoint_id, trained_on, train_loss from checkpoints order by iteration"),
    ("Selection per iteration", {"candidates", "selected"},
     "select c.iteration, count(distinct c.example_id) as examples, count(*) as candidates, "
     "count(distinct s.candidate_id) as selected, any_value(s.selector) as selector, "
     "round(avg(s.score), 4) as mean_selected_score "
     "from candidates c left join selected s using (candidate_id) group by 1 order by 1"),
    ("Evaluation summary", {"eval.summary"},
     "select checkpoint_id, benchmark, protocol, questions, round(accuracy, 3) as accuracy, "
     "round(accuracy_at_max_samples, 3) as accuracy_at_max_samples, round(delta_previous, 3) as delta_previous, "
     "round(delta_base, 3) as delta_base from eval.summary order by benchmark, iteration"),
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
    if not list_tables(home):
        raise FileNotFoundError(f"nothing materialized under {home} yet: run `srlm run` first")
    out = Path(out_dir) if out_dir else home / "report"
    out.mkdir(parents=True, exist_ok=True)
    views = available_views(home)
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>Warehouse: <code>{html.escape(str(home))}</code></p>"]
    for heading, needs, query in TABLES:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(html_table(frame(home, query)) if needs <= views else _missing(needs - views))
    for stem, heading, needs, query, plot in PLOTS:
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


def _missing(views: set[str]) -> str:
    return f"<p class='missing'>not materialized yet: {html.escape(', '.join(sorted(views)))}</p>"
