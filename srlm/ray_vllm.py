"""The vLLM side of the Ray executor (`generation.backend: vllm` with `executor.kind: ray`): rows run through
ray.data.llm's vLLM processor on GPUs. GPU-only at run time; ray.data.llm is imported only when a job starts.

Rows are tokenized here, on the driver, with the model's Hugging Face tokenizer (as srlm/engines/vllm_engine.py
does), so vLLM sees the tokens the transformers engine would; the processor's chat-template, tokenize and
detokenize stages are off. What ray.data.llm needs to know:

- n > 1 keeps only the first completion of a request: every row is one sample with its own seed (the
  per-sequence seed of the transformers engine, cut to 31 bits as VLLMEngine does). vLLM's sampler is not
  the transformers engine's, so its texts are reproducible but not the same texts.
- a LoRA adapter goes per row, in the row's `model` field: a local folder as is, or a checkpoint on an object
  store as its name under `<storage>/checkpoints`, the processor's `dynamic_lora_loading_path`.
- vLLM reports no finish reason: a row that used its whole token budget without ending on a stop token is
  "length", every other row "stop".
- log-probabilities come from `prompt_logprobs` of a one-token request over context + continuation, as in
  VLLMEngine.logprobs.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from srlm.engines.types import SamplingParams
from srlm.storage import is_uri


def generation_request(row: dict, tokenizer, params: SamplingParams, max_length: int) -> dict:
    """A generation row with its prompt tokens, token budget and sample seed (computed on the driver)."""
    from srlm.distributed import decode_prompt
    from srlm.engines.tokenization import encode_prompt
    from srlm.engines.vllm_engine import vllm_seed

    ids = encode_prompt(tokenizer, decode_prompt(row["prompt"]))
    return {"row_id": row["row_id"], "tokenized_prompt": ids, "seed": vllm_seed(params, ids, row["sample_index"]),
            "max_tokens": min(params.max_new_tokens, max_length - len(ids))}


def scoring_request(row: dict, tokenizer, max_length: int) -> dict:
    """A scoring row as the tokens vLLM scores (context dropped from the left to fit with the one token it
    must generate) and how many of the last ones are the continuation's."""
    from srlm.engines.tokenization import scoring_window

    full, n = scoring_window(tokenizer, row["context"], row["continuation"], max_length - 1)
    return {"row_id": row["row_id"], "tokenized_prompt": full, "n_scored": n}


def preprocess(row: dict, kind: str, params: SamplingParams | None, stop_ids: list[int], lora: str | None) -> dict:
    """What the processor's vLLM stage reads: tokenized_prompt, sampling_params, and `model` for a LoRA.
    The other columns (row_id, max_tokens, n_scored) are carried through to `postprocess`."""
    if kind == "generate":
        sampling = dict(n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=row["max_tokens"],
                        seed=row["seed"], stop=list(params.stop) or None, stop_token_ids=stop_ids, skip_special_tokens=True)
        out = {"row_id": row["row_id"], "max_tokens": row["max_tokens"]}
    else:
        sampling = dict(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=1)
        out = {"row_id": row["row_id"], "n_scored": row["n_scored"]}
    out.update(tokenized_prompt=list(row["tokenized_prompt"]), sampling_params=sampling)
    if lora is not None:
        out["model"] = lora
    return out


def _logprob_of(entry: Any, token: int) -> float:
    """One position of prompt_logprobs: {token id: {"logprob": ...}}; the ids may come back as strings."""
    if not entry:
        raise RuntimeError(f"vLLM returned no prompt log-probability for token {token}")
    found = entry.get(token, entry.get(str(token)))
    if found is None:
        raise RuntimeError(f"vLLM's prompt log-probabilities lack the scored token {token}")
    return float(found["logprob"])


def postprocess(row: dict, kind: str, stop_ids: list[int]) -> dict:
    """The result row (srlm.distributed's result schemas) from what the vLLM stage returned."""
    if kind == "generate":
        tokens = list(row.get("generated_tokens") or [])
        n = int(row["num_generated_tokens"])
        ended = bool(tokens) and tokens[-1] in stop_ids
        reason = "length" if n >= row["max_tokens"] and not ended else "stop"
        return {"row_id": row["row_id"], "text": row["generated_text"], "n_tokens": n, "finish_reason": reason}
    ids, positions, n = list(row["prompt_token_ids"]), row["prompt_logprobs"], int(row["n_scored"])
    total = sum(_logprob_of(positions[p], ids[p]) for p in range(len(ids) - n, len(ids)))
    return {"row_id": row["row_id"], "total": total, "n_tokens": n}


def lora_target(adapter: str | None, storage) -> tuple[str | None, str | None]:
    """(the rows' `model` field, the processor's dynamic_lora_loading_path) for an adapter: a local folder is
    named by its path; a checkpoint on an object store by its name under the storage's checkpoints/."""
    if adapter is None:
        return None, None
    if not is_uri(adapter):
        return adapter, None
    root = storage.join("checkpoints")
    if not adapter.startswith(root + "/"):
        raise ValueError(f"vLLM on Ray loads stored adapters from {root}/, not {adapter}")
    return adapter[len(root) + 1 :], root


def processor_config(model_path: str, settings, per_call: int, actors: int, lora_root: str | None):
    """ray.data.llm's vLLMEngineProcessorConfig for the engine settings (a VLLMEngineSettings)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=model_path, engine_kwargs=settings.engine_kwargs(), batch_size=per_call, concurrency=actors,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False, dynamic_lora_loading_path=lora_root,
    )


def engine_step(ray, engine, kind: str, todo: list[dict], params: SamplingParams | None, adapter: str | None, per_call: int):
    """The rows' results through ray.data.llm's vLLM processor (`engine`: the srlm.distributed.RayEngine)."""
    from ray.data.llm import build_processor

    from srlm.engines.tokenization import model_stop_ids

    tokenizer, max_length = engine.tokenizer, engine.max_length
    if kind == "generate":
        requests = [generation_request(r, tokenizer, params, max_length) for r in todo]
    else:
        requests = [scoring_request(r, tokenizer, max_length) for r in todo]
    lora, lora_root = lora_target(adapter, engine.storage)
    stop_ids = model_stop_ids(engine.model_path, tokenizer)
    processor = build_processor(
        processor_config(engine.model_path, engine.engine_settings, per_call, engine.settings.actors, lora_root),
        preprocess=partial(preprocess, kind=kind, params=params, stop_ids=stop_ids, lora=lora),
        postprocess=partial(postprocess, kind=kind, stop_ids=stop_ids),
    )
    return processor(ray.data.from_items(requests, override_num_blocks=-(-len(requests) // per_call)))
