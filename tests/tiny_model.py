"""A tiny bootstrap model for tests: built once per code version by `srlm.bootstrap.pretrain`, then cached.

    from tiny_model import tiny_model_dir, tiny_adapter_dir, tiny_chats
    path = tiny_model_dir()          # a Llama + BPE tokenizer directory, a couple of seconds the first time

The cache lives under the system temp dir, keyed by a hash of the config, the corpus and the source of
`srlm/bootstrap.py`, so editing the bootstrap code rebuilds it. Set SRLM_TEST_CACHE to move it.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

TINY_SETTINGS = dict(  # srlm.bootstrap.BootstrapSettings
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    context_length=192,
    seq_len=64,
    batch_size=8,
    learning_rate=1e-2,
    warmup_steps=5,
    max_seconds=600.0,  # bounded by steps: the same model on a loaded machine (the time budget would replan)
    max_steps=60,
    heldout_fraction=0.05,
    seed=0,
    mixed_precision="no",
)

_NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jun"]
_THINGS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "marbles"]
_ADJ = ["red", "small", "quiet", "bright", "old", "happy", "green", "fast"]
_NOUNS = ["river", "garden", "city", "song", "house", "forest", "letter", "road"]


def tiny_chats(n: int = 300, seed: int = 0) -> list[list[dict[str, str]]]:
    """Made-up conversations: small sums with <think> reasoning, and short descriptions."""
    rng = random.Random(seed)
    chats = []
    for i in range(n):
        if i % 2 == 0:
            name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            user = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have?"
            answer = f"<think>{name} starts with {a}. {a} + {b} = {a + b}.</think>\n{name} has {a + b} {thing}."
        else:
            adj, noun = rng.choice(_ADJ), rng.choice(_NOUNS)
            user = f"Describe a {adj} {noun} in one sentence."
            answer = f"The {adj} {noun} is calm and {rng.choice(_ADJ)}, and the {rng.choice(_NOUNS)} is near."
        chats.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return chats


def tiny_documents() -> list[str]:
    from jinja2 import Template

    from srlm.bootstrap import CHAT_TEMPLATE

    template = Template(CHAT_TEMPLATE)
    return [template.render(messages=chat, add_generation_prompt=False) for chat in tiny_chats()]


def _cache_root() -> Path:
    root = Path(os.environ.get("SRLM_TEST_CACHE") or Path(tempfile.gettempdir()) / "srlm-test-cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(*parts: str) -> str:
    import transformers

    import srlm.bootstrap
    import srlm.training

    h = hashlib.sha256()
    for part in (
        repr(sorted(TINY_SETTINGS.items())),
        Path(srlm.bootstrap.__file__).read_text(),
        Path(srlm.training.__file__).read_text(),
        Path(__file__).read_text(),
        transformers.__version__,
        *parts,
    ):
        h.update(part.encode())
    return h.hexdigest()[:12]


def tiny_model_dir() -> Path:
    """The cached tiny model directory (built on first use)."""
    from srlm.bootstrap import BootstrapSettings, pretrain

    out = _cache_root() / f"tiny-model-{_key()}"
    if not (out / "config.json").is_file():
        pretrain(tiny_documents(), out, BootstrapSettings(**TINY_SETTINGS), device="cpu", log=lambda _: None)
    return out


def tiny_adapter_dir() -> Path:
    """A LoRA adapter on the tiny model, trained to answer every prompt with one fixed sentence."""
    from srlm.config import Lora
    from srlm.training import TrainSettings, train_lora

    base = tiny_model_dir()
    out = _cache_root() / f"tiny-adapter-{_key('adapter')}"
    if not (out / "adapter_config.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(base))
        examples = [
            (tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True), "The green forest is quiet.")
            for chat in tiny_chats(48, seed=1)
        ]
        train_lora(
            base,
            examples,
            out,
            Lora(r=8, alpha=16, dropout=0.0, target_modules="all-linear"),
            TrainSettings(
                epochs=1, learning_rate=1e-2, batch_size=8, grad_accum=1, max_length=512, warmup_ratio=0.05, processes=1,
                fsdp=False, gradient_checkpointing=False, report_to=["tensorboard"], seed=0, device="cpu",
                dtype="float32", max_steps=40,
            ),
        )
    return out
