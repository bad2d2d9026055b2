"""LoRA training in several processes: `accelerate launch` runs srlm.training.run_training once per process.

    launch(job, log)                          # train_lora with settings.processes > 1
    python -m srlm.train_launch SPEC.json                                # what each launched process runs

The parent writes the run's TrainJob to a spec file, starts
`accelerate launch --multi_gpu --num_processes N -m srlm.train_launch SPEC.json` (accelerate's torchrun launcher:
on a CPU device the processes talk over gloo; `--cpu` would start a single process), forwards the main process's
"train:" lines to `log`, and returns the TrainReport that process saved beside the adapter. If the parent is
interrupted, it stops the processes; the adapter directory is written atomically either way.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from srlm.engines.runtime import resolve_device
from srlm.training import TrainJob, TrainReport, TrainSettings, run_training

_TAIL_LINES = 30  # of the launch's other output, shown when it fails without a process saying why
_ERROR_PREFIX = "train-error: "  # a process's line saying why it failed


def launch(job: TrainJob, log: Callable[[str], None]) -> TrainReport:
    """Train in job.settings.processes processes; returns the main process's report."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="srlm-train-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(job.to_json())
        _run(launch_command(spec, job.settings), log)
    report = TrainReport(**json.loads((Path(job.out_dir) / "training_report.json").read_text()))
    report.seconds, report.adapter_dir = time.perf_counter() - started, job.out_dir  # not kept in the folder
    return report


def launch_command(spec: Path, settings: TrainSettings) -> list[str]:
    """The `accelerate launch` command line for a spec file."""
    on_cpu = resolve_device(settings.device).type == "cpu"
    # on CPU the processes share the cores; a GPU process needs few
    threads = max(1, (os.cpu_count() or 1) // settings.processes) if on_cpu else 1
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",  # accelerate's torchrun launcher, also for CPU processes (`--cpu` starts only one)
        "--num_processes", str(settings.processes),
        "--num_machines", "1",
        "--num_cpu_threads_per_process", str(threads),
        "--mixed_precision", "no",  # each process sets its own, from settings.dtype
        "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "srlm.train_launch", str(spec),
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], log: Callable[[str], None]) -> None:
    """Run the launch, forwarding "train:" lines; raise with the output's tail if it fails."""
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    errors: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("train:"):
                log(line)
            elif line.startswith(_ERROR_PREFIX):
                errors.append(line.removeprefix(_ERROR_PREFIX))
            else:
                tail.append(line)
        rc = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the launcher and its processes (their own session)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    if rc != 0:
        raise RuntimeError(f"training under accelerate launch failed (exit code {rc}):\n" + "\n".join(errors or tail))


def main(argv: Sequence[str] | None = None) -> None:
    (spec_path,) = sys.argv[1:] if argv is None else argv
    try:
        run_training(TrainJob.from_json(Path(spec_path).read_text()), log=lambda msg: print(msg, flush=True))
    except Exception as exc:  # one line for the parent's error message; the traceback follows on stderr
        why = " ".join(str(exc).split())
        print(f"{_ERROR_PREFIX}process {os.environ.get('RANK', '?')}: {type(exc).__name__}: {why}", flush=True)
        raise


if __name__ == "__main__":
    main()
