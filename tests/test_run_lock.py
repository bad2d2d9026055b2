"""One run per SRLM_HOME: the lock names its holder, dies with its process, and guards UI-launched runs too."""

import os
import signal
import subprocess
import sys
import time

import dagster as dg
import pytest

from resources import ParquetIOManager
from srlm import run_lock
from srlm.run_lock import RunLocked, acquire

HOLD = """
import sys, time
from srlm.run_lock import acquire
lock = acquire(sys.argv[1], "srlm run --config other.yaml")
lock.note(run_id="abc123")
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_is_refused_with_the_name_of_the_first(tmp_path, holder):
    with pytest.raises(RunLocked) as error:
        acquire(tmp_path, "srlm run")
    message = str(error.value)
    assert f"pid {holder.pid}" in message and "srlm run --config other.yaml" in message and "abc123" in message


def test_a_killed_run_leaves_no_lock_and_the_next_run_says_so(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = acquire(tmp_path, "srlm run")
    try:
        assert lock.previous["pid"] == holder.pid and lock.previous["run_id"] == "abc123"
        assert run_lock.held_by_this_process(tmp_path)
    finally:
        lock.release()
    assert acquire(tmp_path, "again").previous["pid"] == os.getpid()  # released: free again


def test_the_cli_refuses_a_concurrent_run(tmp_path, micro_config, holder, capsys):
    from srlm.cli import main

    config = micro_config()
    # the lock of a home lives in its Dagster folder
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "home" / "dagster")], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert main(["run", "--config", str(config)]) == 1
        assert time.monotonic() - started < 30  # refused before any work
        assert "another run is active on this home" in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()


def test_a_run_launched_elsewhere_is_refused_by_the_io_manager(tmp_path):
    """A UI launch goes through the IO manager, which takes the lock before the first step."""

    @dg.asset(key=["t", "table"])
    def table():
        import polars as pl

        return pl.DataFrame({"x": [1]})

    with dg.instance_for_test() as instance:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, instance.root_directory], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "held"
            result = dg.materialize([table], instance=instance, resources={"io_manager": ParquetIOManager(home=str(tmp_path))}, raise_on_error=False)
            assert not result.success
            failure = next(e for e in result.all_events if e.is_failure)
            assert "another run is active on this home" in str(failure.event_specific_data.error)
            assert not (tmp_path / "tables").exists()
        finally:
            proc.kill()
            proc.wait()
        # free again: the same run goes through and releases the lock at its end
        assert dg.materialize([table], instance=instance, resources={"io_manager": ParquetIOManager(home=str(tmp_path))}).success
        acquire(instance.root_directory, "next").release()
