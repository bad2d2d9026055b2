"""Speed of the project's TransformersEngine against plain transformers / peft on one model, in one run.

    python bench/engine_speed.py --model DIR                 # e.g. a SmolLM2-135M-Instruct directory
    python bench/engine_speed.py --model DIR --repeats 5 --questions 100 --train-steps 5

1. generation: tokens/s of `TransformersEngine.generate` against plain `model.generate` on the same zero-shot
   GSM8K chat prompts (all in one batch, --max-new-tokens, sampled: temperature 0.8, top_p 0.95, no top_k),
   without and with a LoRA adapter: a fresh peft LoRA (r=8, all linear layers, small random non-zero B)
   saved to a temp dir; plain generation then runs peft's unmerged forward with the adapter active. Tokens
   are counted up to and including each row's first end-of-turn token (Completion.n_tokens for the engine).
   The two sides sample with different random streams, so their texts (and lengths) differ.
2. loglikelihood: questions/s of `TransformersEngine.logprobs`, which runs a question's shared context once,
   against the previous implementation (one right-padded sequence per (context, continuation), kept here as
   `logprobs_without_reuse`), on the first --questions ARC-Challenge and HellaSwag questions of the kit; and
   whether both choose the same answers.
3. LoRA training: seconds per optimizer step with plain peft (batch 16 x 128 tokens of GSM8K text, r=8 on
   all linear layers, AdamW): forward + backward + step, after one warm-up step.

Every comparison interleaves its two sides within each repeat (engine, plain / reuse, no reuse) and prints
each repeat's ratio and the median: the dev machines are shared, so absolute numbers move with the load.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import describe_model, median

SAMPLING = {"temperature": 0.8, "top_p": 0.95}


def fresh_lora(model_dir: Path, out: Path) -> Path:
    """A peft LoRA adapter (r=8, all linear layers) with small random B, so that it changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model_dir)), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1e-3)
    model.save_pretrained(str(out))
    return out


def plain_generate(model, tokenizer, texts: list[str], stop_ids: list[int], max_new_tokens: int) -> int:
    """model.generate on all texts at once (left padding); returns the tokens generated up to each row's end."""
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(
            **enc, do_sample=True, top_k=0, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id, **SAMPLING,
        )
    rows = out[:, enc["input_ids"].shape[1] :].tolist()
    return sum(next((k + 1 for k, t in enumerate(r) if t in stop_ids), len(r)) for r in rows)


def bench_generation(args, engine, prompts, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srlm.engines.tokenization import stop_token_ids
    from srlm.engines.types import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(str(args.model), padding_side="left")
    plain = AutoModelForCausalLM.from_pretrained(str(args.model)).eval()
    stop_ids = stop_token_ids(tokenizer, plain.generation_config)  # the engine's end-of-turn ids
    texts = [engine.render_chat(p) for p in prompts]
    plain_lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(args.model)), str(adapter)).eval()
    params = SamplingParams(n=1, max_new_tokens=args.max_new_tokens, seed=0, **SAMPLING)
    engine.generate(prompts[:2], SamplingParams(max_new_tokens=2), adapter=str(adapter))  # load the adapter once
    for label, lora, model in (("base", None, plain), ("LoRA r=8", str(adapter), plain_lora)):
        rates: dict[str, list[float]] = {"engine": [], "plain": []}
        for rep in range(args.repeats):
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            outs = engine.generate(prompts, params, adapter=lora)
            tokens = sum(c.n_tokens for o in outs for c in o.completions)
            rates["engine"].append(tokens / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            plain_tokens = plain_generate(model, tokenizer, texts, stop_ids, args.max_new_tokens)
            rates["plain"].append(plain_tokens / (time.perf_counter() - t0))
            print(
                f"  generate {label} repeat {rep + 1}: engine {tokens} tokens {rates['engine'][-1]:.1f} tok/s, "
                f"plain {plain_tokens} tokens {rates['plain'][-1]:.1f} tok/s",
                flush=True,
            )
        ratios = [a / b for a, b in zip(rates["engine"], rates["plain"])]
        print(
            f"RESULT generate {label}: engine {median(rates['engine']):.1f} tok/s, plain model.generate "
            f"{median(rates['plain']):.1f} tok/s, ratio median {median(ratios):.2f}x "
            f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


def logprobs_without_reuse(engine, requests: list[tuple[str, str]]) -> list[float]:
    """The previous TransformersEngine.logprobs (base model): each (context, continuation) is one sequence,
    right-padded, batch_size sequences per forward pass, logits only for the positions that are scored."""
    import torch

    from srlm.engines.tokenization import encode_pair

    items = []
    for k, (context, continuation) in enumerate(requests):
        ctx, cont = encode_pair(engine.tokenizer, context, continuation)
        full = (ctx + cont)[-(engine.max_length + 1) :]
        items.append((k, full, min(len(cont), len(full) - 1)))
    totals = [0.0] * len(requests)
    todo = sorted((it for it in items if it[2] > 0), key=lambda it: (-len(it[1]), it[0]))
    with torch.inference_mode():
        for start in range(0, len(todo), engine.config.batch_size):
            batch = todo[start : start + engine.config.batch_size]
            width = max(len(full) - 1 for _, full, _ in batch)
            inputs = torch.full((len(batch), width), engine.tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (_, full, _) in enumerate(batch):
                inputs[r, : len(full) - 1] = torch.tensor(full[:-1], dtype=torch.long)
                attention[r, : len(full) - 1] = 1
            first = min(len(full) - 1 - n for _, full, n in batch)
            logits = engine.model(input_ids=inputs, attention_mask=attention, logits_to_keep=width - first).logits
            for r, (k, full, n) in enumerate(batch):
                T = len(full) - 1
                row = torch.log_softmax(logits[r, T - n - first : T - first].float(), dim=-1)
                totals[k] = row.gather(1, torch.tensor(full[-n:]).unsqueeze(1)).sum().item()
    return totals


def bench_loglikelihood(args, engine, kit: Path) -> None:
    from srlm.benchmarks import loglikelihood_requests, read_benchmark

    for benchmark in ("arc_challenge", "hellaswag"):
        questions = read_benchmark(benchmark, kit)[: args.questions]
        requests = [r for q in questions for r in loglikelihood_requests(q)]
        rates: dict[str, list[float]] = {"reuse": [], "no reuse": []}
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            new = [lp.total for lp in engine.logprobs(requests)]
            rates["reuse"].append(len(questions) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            old = logprobs_without_reuse(engine, requests)
            rates["no reuse"].append(len(questions) / (time.perf_counter() - t0))
            print(
                f"  {benchmark} repeat {rep + 1}: reuse {rates['reuse'][-1]:.2f} q/s, "
                f"no reuse {rates['no reuse'][-1]:.2f} q/s",
                flush=True,
            )
        same, start = 0, 0
        for q in questions:
            span = range(start, start + len(q.choices))
            same += max(span, key=new.__getitem__) == max(span, key=old.__getitem__)
            start += len(q.choices)
        ratios = [a / b for a, b in zip(rates["reuse"], rates["no reuse"])]
        print(
            f"RESULT loglikelihood {benchmark} ({len(questions)} questions, {len(requests)} requests): reuse "
            f"{median(rates['reuse']):.2f} q/s, no reuse {median(rates['no reuse']):.2f} q/s, ratio median "
            f"{median(ratios):.2f}x (per repeat: {', '.join(f'{r:.2f}' for r in ratios)}); same choice "
            f"{same}/{len(questions)}; max |total difference| {max(abs(a - b) for a, b in zip(new, old)):.1e}"
        )


def lora_train_seconds_per_step(model_dir: Path, texts: list[str], steps: int, batch: int = 16, length: int = 128) -> list[float]:
    """Seconds per LoRA optimizer step with plain peft (r=8, all linear layers, AdamW, float32): one batch of
    `batch` x `length` tokens (the texts' tokens packed end to end) through forward, backward and step; the
    first (warm-up) step is not counted."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    stream = [t for text in texts for t in tokenizer(text + tokenizer.eos_token)["input_ids"]]
    ids = torch.tensor(stream[: batch * length]).view(batch, length)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(model_dir)), LoraConfig(r=8, target_modules="all-linear"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seconds = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - t0)
    return seconds[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="local Hugging Face model directory")
    ap.add_argument("--kit", help="offline data kit folder (default: srlm.kit.find_data_kit)")
    ap.add_argument("--prompts", type=int, default=32, help="GSM8K prompts, generated in one batch (default 32)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--questions", type=int, default=40, help="ARC-Challenge and HellaSwag questions each (default 40)")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core); on a busy "
                    "machine 1 avoids waiting at every parallel region for a core another job holds")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from srlm.benchmarks import generation_messages, read_benchmark
    from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineSettings
    from srlm.kit import find_data_kit

    kit = find_data_kit(args.kit)
    gsm8k = read_benchmark("gsm8k", kit)
    prompts = [generation_messages(q) for q in gsm8k[: args.prompts]]
    engine = TransformersEngine(args.model, TransformersEngineSettings("cpu", "auto", args.prompts, trust_remote_code=False))
    print(f"model: {describe_model(args.model)}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    tmp = Path(tempfile.mkdtemp(prefix="srlm-bench-engine-"))
    try:
        bench_generation(args, engine, prompts, fresh_lora(args.model, tmp / "lora"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    del engine
    # scoring on a fresh engine (no adapter loaded: the old path calls the model directly), default batch size
    bench_loglikelihood(args, TransformersEngine(args.model, TransformersEngineSettings("cpu", "auto", 32, trust_remote_code=False)), kit)
    seconds = lora_train_seconds_per_step(args.model, [q.question for q in gsm8k], args.train_steps)
    print(
        f"RESULT LoRA training (plain peft, r=8 all-linear, batch 16 x 128 tokens): median {median(seconds):.2f} s/step "
        f"(per step: {', '.join(f'{s:.2f}' for s in seconds)})"
    )


if __name__ == "__main__":
    main()
