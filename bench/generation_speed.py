"""Generation speed of the transformers backend: batched vs one prompt at a time.

    python bench/generation_speed.py                       # builds a default-size bootstrap model first
    python bench/generation_speed.py --model DIR           # a bootstrap (or any local HF) model directory

Both variants use the same model (loaded once per engine), the same prompts (zero-shot GSM8K chat prompts
from the offline kit, as the `generate` evaluation protocol sends them), the same SamplingParams and the
same max_new_tokens. "batched" is TransformersEngine with batch_size=--batch-size (the config default is
32); "single" is batch_size=1, i.e. one sequence per forward pass. Tokens are counted from
Completion.n_tokens (tokens actually produced, end-of-turn token included; padding after a row has ended
is not counted, so the batched variant pays for it). Each repeat runs batched, single, batched and compares
the single run with the mean of the two batched runs around it; the script prints every repeat's ratio and
their median, because the machine may be shared. The seeded sampler makes every sequence's sample
independent of batching, so the script also counts identical completions between the variants.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import build_bootstrap_model, describe_model, median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: build a bootstrap model into a temp dir)")
    ap.add_argument("--config", help="experiment config whose model.bootstrap sizes to build (default: configs/default.yaml)")
    ap.add_argument("--bootstrap-seconds", type=float, default=30.0, help="training budget when building (default 30)")
    ap.add_argument("--kit", help="offline data kit folder (default: srlm.kit.find_data_kit)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=1, help="samples per prompt (default 1: one sequence per prompt)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of the batched variant (default 32)")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8, as eval/expand)")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from srlm.benchmarks import generation_messages, read_benchmark
    from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineSettings
    from srlm.engines.types import SamplingParams
    from srlm.kit import find_data_kit

    tmp = None
    if args.model:
        model_dir = Path(args.model)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="srlm-bench-gen-"))
        model_dir = build_bootstrap_model(tmp / "model", args.bootstrap_seconds, args.config)
    try:
        kit = find_data_kit(args.kit)
        questions = read_benchmark("gsm8k", kit)[: args.prompts]
        prompts = [generation_messages(q) for q in questions]
        params = SamplingParams(
            n=args.n, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=0
        )
        engines = {
            "batched": TransformersEngine(model_dir, TransformersEngineSettings("cpu", "auto", args.batch_size, False)),
            "single": TransformersEngine(model_dir, TransformersEngineSettings("cpu", "auto", 1, False)),
        }
        prompt_tokens = [len(engines["single"].tokenizer(engines["single"].render_chat(p))["input_ids"]) for p in prompts]
        print(f"model: {describe_model(model_dir)}")
        print(
            f"prompts: {len(prompts)} GSM8K chat prompts ({min(prompt_tokens)}-{max(prompt_tokens)} tokens), "
            f"n={args.n}, max_new_tokens={args.max_new_tokens}, temperature={args.temperature}, "
            f"batched batch_size={args.batch_size}; torch threads {torch.get_num_threads()}"
        )
        warm = SamplingParams(n=1, temperature=args.temperature, top_p=args.top_p, max_new_tokens=4, seed=0)
        for engine in engines.values():
            engine.generate(prompts[:2], warm)

        # Each repeat runs batched, single, batched (A-B-A): the single run is the long one, and bracketing it
        # with two batched runs cancels a load that drifts linearly during the repeat.
        rates: dict[str, list[float]] = {name: [] for name in engines}
        ratios: list[float] = []
        texts: dict[str, list[str]] = {}
        for rep in range(args.repeats):
            this: dict[str, list[float]] = {name: [] for name in engines}
            for name in ("batched", "single", "batched"):
                t0 = time.perf_counter()
                outs = engines[name].generate(prompts, params)
                seconds = time.perf_counter() - t0
                tokens = sum(c.n_tokens for o in outs for c in o.completions)
                this[name].append(tokens / seconds)
                texts[name] = [c.text for o in outs for c in o.completions]
                print(f"  repeat {rep + 1} {name:>7}: {tokens} tokens in {seconds:6.2f} s = {tokens / seconds:8.1f} tokens/s")
            batched = sum(this["batched"]) / len(this["batched"])
            rates["batched"].append(batched)
            rates["single"].append(this["single"][0])
            ratios.append(batched / this["single"][0])
            print(f"  repeat {rep + 1} ratio batched/single: {ratios[-1]:.2f}x")

        same = sum(a == b for a, b in zip(texts["batched"], texts["single"]))
        lengths = [c.n_tokens for o in outs for c in o.completions]
        at_max = sum(c.finish_reason == "length" for o in outs for c in o.completions)
        print("RESULT generation_speed")
        print(f"  batched (batch_size={args.batch_size}): median {median(rates['batched']):.1f} tokens/s")
        print(f"  single  (batch_size=1): median {median(rates['single']):.1f} tokens/s")
        print(f"  ratio batched/single: median {median(ratios):.2f}x  (per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
        print(f"  identical completions batched vs single: {same}/{len(texts['single'])}")
        print(
            f"  completion lengths: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)} tokens; "
            f"{at_max}/{len(lengths)} stopped at max_new_tokens (a batch decodes until its longest row ends, "
            f"so short rows waste batched work)"
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
