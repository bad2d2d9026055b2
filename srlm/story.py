"""One rationale's story, as markdown for the UI: where it came from, why it was kept, what it trains.

Read from the warehouse views (`ancestry`, `scores`, `candidates`, `data.instructions`) right after a
selection, so the `iter_t/selected` asset page shows, for one example, the chain of rationales back to the
original example (which checkpoint wrote each), and the scores of every sibling candidate next to the parent's.
"""

from __future__ import annotations

import math
from pathlib import Path

from srlm.registry import PARENT, selector_names
from srlm.warehouse import query_read_only

EXCERPT_CHARS = 120


def _excerpt(text: str | None) -> str:
    text = " ".join((text or "").split()).replace("|", "\\|")
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.3f}" if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def _rows(home: Path, query: str, params: tuple) -> list[dict]:
    columns, rows = query_read_only(home, query, params)
    return [dict(zip(columns, row)) for row in rows]


def rationale_story(home: str | Path, candidate_id: str, selector: str, schema: str) -> str:
    """Markdown: the kept candidate's chain back to its example, and its iteration's scoreboard."""
    home = Path(home)
    chain = _rows(home, "select * from ancestry where candidate_id = ? order by depth desc", (candidate_id,))
    if not chain:
        return f"_no candidate {candidate_id} in the warehouse_"
    winner = chain[-1]
    example_id = chain[0]["ancestor_id"]
    found = _rows(home, "select instruction, rationale from data.instructions where example_id = ?", (example_id,))
    example = found[0] if found else {"instruction": "", "rationale": ""}
    lines = [
        f"**Example** `{example_id}`: {_excerpt(example['instruction'])}",
        "",
        "**Its rationale, iteration by iteration** (oldest first)",
        "",
        "| iteration | written by | rationale |",
        "|---|---|---|",
    ]
    for link in chain:
        if link["is_original"]:
            lines.append(f"| D0 | the data | {_excerpt(example['rationale']) or '(none)'} |")
        else:
            lines.append(f"| {link['iteration']} | `{link['checkpoint_id']}` | {_excerpt(link['text'])} |")
    names = selector_names()
    board = _rows(
        home,
        f"""select s.role, c.sample_index, s.candidate_id, {", ".join(f"s.{n}" for n in names)}
           from scores s left join candidates c on c.candidate_id = s.candidate_id
           where s.iteration = ? and s.arm = ? and s.example_id = ? order by s.role desc, c.sample_index""",
        (winner["iteration"], winner["arm"], example_id),
    )
    lines += [
        "",
        f"**Why it was kept at iteration {winner['iteration']}**: selector `{selector}`, best {selector} score among "
        "the non-degenerate candidates (the parent row is the rationale they enriched)",
        "",
        f"| candidate | {' | '.join(names)} | kept |",
        "|---" * (len(names) + 2) + "|",
    ]
    for row in board:
        name = PARENT if row["role"] == PARENT else f"sample {row['sample_index']}"
        kept = "**yes**" if row["candidate_id"] == candidate_id else ""
        scores = " | ".join(_number(row[s]) for s in names)
        lines.append(f"| {name} | {scores} | {kept} |")
    lines += ["", f"It trains M{winner['iteration']} through `{schema}/training_examples`."]
    return "\n".join(lines)
