"""One run at a time per SRLM_HOME: an exclusive lock on a file of the home's local Dagster folder.

The lock is an `fcntl.flock` on an open file, so the kernel releases it when its process dies: a run killed
with SIGKILL leaves no lock behind, only the file naming it, which the next run reports and overwrites.
`srlm run` takes it for its whole command; every Dagster run (also one launched from the UI) takes it in
its IO manager before the first step, so a second run is refused with the name of the active one. A run
started by `srlm run` finds the lock held by its own process and goes on.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

LOCK_FILE = "run.lock"


class RunLocked(RuntimeError):
    """Another run holds this home; the message names it."""


@dataclass
class RunLock:
    path: Path
    handle: object  # the open file whose flock is the lock
    previous: Optional[dict]  # what a killed run left in the file (its lock is gone), else None
    holder: dict = field(default_factory=dict)

    def note(self, **fields) -> None:
        """Add fields (e.g. the Dagster run id) to the holder's description."""
        holder = {**self.holder, **fields}
        self.holder = holder
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(holder))
        self.handle.flush()

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("command"):
        parts.append(f"'{holder['command']}'")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("run_id"):
        parts.append(f"Dagster run {holder['run_id']}")
    return ", ".join(parts)


def held_by_this_process(folder: str | os.PathLike) -> bool:
    holder = _read(Path(folder) / LOCK_FILE)
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def acquire(folder: str | os.PathLike, command: str) -> RunLock:
    """Take the lock of `folder` or raise RunLocked naming the run that holds it."""
    path = Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(path)
        handle.close()
        raise RunLocked(
            f"another run is active on this home ({path.parent}): {describe(holder)}. "
            "Wait for it to finish, or stop it; one run at a time keeps the tables consistent."
        ) from None
    previous = _read(path) or None
    lock = RunLock(path, handle, previous)
    lock.note(pid=os.getpid(), host=socket.gethostname(), command=command, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    return lock
