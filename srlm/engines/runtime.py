"""Loading models and tokenizers from local Hugging Face directories, with errors that say what is wrong.

Also: device and dtype resolution ("auto" picks CUDA and bfloat16 where available) and an atomic
directory writer shared by everything that saves a model (bootstrap, LoRA training).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch
import transformers

from srlm.engines.tokenization import POSITION_KEYS

# weight-loading progress bars would flood the run logs (one per model or adapter load)
transformers.utils.logging.disable_progress_bar()

# tokenizer.model_max_length above this is transformers' "no limit" placeholder (1e30), not a real length
_SANE_TOKENIZER_MAX = 10_000_000
_FALLBACK_MAX_LENGTH = 2048
_CAUSAL_ARCH_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class ModelLoadError(Exception):
    """A model or tokenizer directory could not be loaded; the message names the path and the problem."""


# ------------------------------------------------------------------------------------- device and dtype


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA when available, else CPU) | "cpu" | "cuda" | "cuda:N"."""
    device = (device or "auto").strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} was asked for but CUDA is not available here "
                f"(torch {torch.__version__}); use device: auto or cpu"
            )
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return dev
    raise ModelLoadError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX): bf16 autocast is then about
    twice as fast as float32 for training; without it, it is slower. Linux only (reads /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """"auto": bfloat16 on a CUDA device that supports it, else float32; or float32 | bfloat16 | float16."""
    dtype = (dtype or "auto").strip().lower()
    dev = torch.device(device) if isinstance(device, str) else device
    if dtype == "auto":
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


# ---------------------------------------------------------------------------------------------- loading


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is a file, not a Hugging Face model directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        present = sorted(p.name for p in path.iterdir())[:8]
        raise ModelLoadError(
            f"{path} is not a Hugging Face model directory: it has no config.json "
            f"(found: {', '.join(present) if present else 'nothing'})"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} does not hold a JSON object")
    return config


def check_causal_lm_dir(path: str | os.PathLike, trust_remote_code: bool = False) -> dict[str, Any]:
    """Check that `path` holds a causal LM that transformers can load; returns its config.json content."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    path = Path(path).expanduser()
    config = _read_config(path)
    model_type = config.get("model_type")
    auto_map = config.get("auto_map") or {}
    if not model_type:
        raise ModelLoadError(f"{path / 'config.json'} has no model_type: not a transformers model config")
    if model_type not in CONFIG_MAPPING_NAMES:
        if auto_map:
            if not trust_remote_code:
                raise ModelLoadError(
                    f"{path}: model_type {model_type!r} needs custom code shipped with the model (config.json "
                    "auto_map); loading it runs that code. If you trust it, set model.trust_remote_code: true"
                )
        else:
            import transformers

            raise ModelLoadError(
                f"{path}: unknown model_type {model_type!r} (transformers {transformers.__version__} does not "
                "know it, and the directory ships no custom code)"
            )
    if auto_map and model_type not in CONFIG_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} ships custom code but no AutoModelForCausalLM in its auto_map "
            f"({', '.join(sorted(auto_map))}): not a causal language model"
        )
    architectures = config.get("architectures") or []
    what = f"model_type {model_type!r}" + (f", architectures {architectures}" if architectures else "")
    if config.get("is_encoder_decoder"):
        raise ModelLoadError(f"{path}: {what} is an encoder-decoder model, not a causal (decoder-only) language model")
    if model_type in CONFIG_MAPPING_NAMES:
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if architectures:
            causal = causal and any(a.endswith(_CAUSAL_ARCH_SUFFIXES) for a in architectures)
        elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get("is_decoder"):
            causal = False  # encoder families (BERT, RoBERTa, ...) are only causal LMs when built as decoders
        if not causal:
            raise ModelLoadError(
                f"{path}: {what} is not a causal language model; SRLM needs a decoder-only model "
                "that AutoModelForCausalLM loads (Llama, Qwen, Mistral, GPT-2, ...)"
            )
    return config


def load_tokenizer(path: str | os.PathLike, padding_side: str, trust_remote_code: bool = False):
    """The tokenizer of a model directory with `padding_side` set ("left" to generate, "right" to train or
    score): it is not saved with the tokenizer, so every load sets it. A missing pad token falls back to eos."""
    from transformers import AutoTokenizer

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"tokenizer directory {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types here (OSError, ValueError, KeyError)
        hint = ""
        if not trust_remote_code and "trust_remote_code" in str(exc):
            hint = "; it needs custom code: if you trust it, set model.trust_remote_code: true"
        raise ModelLoadError(f"{path}: could not load a tokenizer ({type(exc).__name__}: {exc}){hint}") from exc
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str | os.PathLike,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    padding_side: str = "left",
):
    """(model, tokenizer) from a local directory; the model is on `device`, in `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = Path(path).expanduser()
    check_causal_lm_dir(path, trust_remote_code)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(path, padding_side, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{path}: could not load the model ({type(exc).__name__}: {exc})") from exc
    model.to(dev)
    model.eval()
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ModelLoadError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocab}"
        )
    return model, tokenizer


def model_max_length(model, tokenizer) -> int:
    """Usable context: the smaller of the model's position limit and a real tokenizer.model_max_length."""
    limits = []
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in POSITION_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _SANE_TOKENIZER_MAX:
        limits.append(tok_max)
    return min(limits) if limits else _FALLBACK_MAX_LENGTH


@lru_cache(maxsize=8)
def tokenizer_and_context(model_path: str, trust_remote_code: bool = False):
    """A model's tokenizer (padding left) and usable context length, from its directory without loading the
    weights: what counting tokens and rendering prompts need (cached: the same objects for every caller)."""
    from transformers import AutoConfig

    tokenizer = load_tokenizer(model_path, "left", trust_remote_code)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return tokenizer, model_max_length(SimpleNamespace(config=config), tokenizer)


def adapter_dir(adapter: str | os.PathLike) -> Path:
    """A LoRA adapter's folder, resolved, after checking that it holds a peft adapter."""
    path = Path(adapter).expanduser().resolve()
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a peft adapter directory (no adapter_config.json)")
    return path


# ------------------------------------------------------------------------------------------ atomic save


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory beside `out_dir`; on success it replaces `out_dir` by rename.

    If the body raises (or the process dies), `out_dir` is left as it was (absent, or the previous
    complete version) and the temp directory is removed (or, after a kill, left as a hidden `.tmp-` sibling).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
