"""Helpers shared by the bench scripts: medians, a bootstrap model when none is given, peak memory.

The scripts run from the repository root (`python bench/<script>.py`); this module puts the root on
sys.path so `srlm` and `assets` import even without the editable install.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_bootstrap_model(
    out_dir: Path, max_seconds: float, config: str | None = None, log: Callable[[str], None] = print
) -> Path:
    """A bootstrap model shaped like `config`'s model.bootstrap section (default: configs/default.yaml),
    trained on that config's bootstrap corpus for `max_seconds`, saved to `out_dir`.

    Same documents and sizes as the project's model/base asset; only the time budget differs, so the
    architecture (and hence the speed) is realistic while the weights are undertrained.
    """
    from assets.model import corpus_documents
    from srlm.bootstrap import BootstrapSettings, pretrain
    from srlm.config import load_config

    cfg = load_config(config)
    settings = BootstrapSettings.of(cfg.model.bootstrap, seed=cfg.experiment.seed).model_copy(update={"max_seconds": float(max_seconds)})
    started = time.perf_counter()
    documents = corpus_documents(cfg)
    log(f"bootstrap: {len(documents)} corpus documents from {cfg.source_file}; budget {max_seconds:.0f} s")
    pretrain(documents, Path(out_dir), settings, device="cpu", log=log)
    log(f"bootstrap: model ready in {time.perf_counter() - started:.0f} s")
    return Path(out_dir)


def describe_model(path: Path) -> str:
    """One line: the architecture sizes from config.json."""
    import json

    c = json.loads((Path(path) / "config.json").read_text())
    return (
        f"{c.get('model_type')} {c.get('num_hidden_layers')}x{c.get('hidden_size')} "
        f"(heads {c.get('num_attention_heads')}, mlp {c.get('intermediate_size')}, vocab {c.get('vocab_size')}, "
        f"context {c.get('max_position_embeddings')})"
    )
