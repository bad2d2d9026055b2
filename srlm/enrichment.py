"""Is the method at work? The figures of sql/enrichment.sql and the examples of sql/enrichment_examples.sql,
as one log line and as markdown, for the run's output, the UI metadata and `srlm report`."""

from __future__ import annotations

from typing import Mapping, Sequence

EXCERPT_CHARS = 400


def summary_line(row: Mapping) -> str:
    """One generation's figures in a sentence."""
    return (
        f"{row['arm']} iteration {row['iteration']}: {row['candidates']} candidates for {row['examples']} examples, "
        f"{row['mean_candidate_tokens']:.0f} tokens on average against {row['mean_parent_tokens']:.0f} for their parents; "
        f"{row['share_longer_not_degenerate']:.0%} longer than their parent and not degenerate, "
        f"{row['share_with_skill_markers']:.0%} mark skills, "
        f"{row['share_likelihood_beats_parent']:.0%} raise the response's likelihood more than the parent, "
        f"all selectors agree on {row['share_selectors_agree']:.0%} of the examples"
    )


def _excerpt(text: str) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    if not text:
        return "(none)"
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def examples_markdown(rows: Sequence[Mapping]) -> str:
    """Each rewritten rationale beside the parent it rewrote, as a markdown table."""
    if not rows:
        return "_no candidates yet_"
    lines = ["| example | parent rationale | rewritten (kept by) |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['example_id']}` | {_excerpt(r['parent'])} | {_excerpt(r['candidate'])} ({r['kept_by']}) |")
    return "\n".join(lines)
