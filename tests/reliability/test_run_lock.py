import pytest
"""Run-directory ownership: a live lock refuses a second run; a killed holder's lock is free again."""

import json
import subprocess
import sys


from tests.conftest import run_kbit

HOLD = """
import sys, time
from kbit.core.runs.folder import RunLock
lock = RunLock(sys.argv[1])  # kept referenced: a collected lock object releases its OS lock
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_second_run_on_a_locked_directory_is_refused_and_a_dead_holder_frees_it(tiny, tmp_path):
    out = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "1", "--eval-limit", "0")
        assert result.returncode == 2 and f"in use by process {holder.pid}" in result.stderr
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock, whatever the lock file still says
        holder.wait()
    assert json.loads((out / ".kbit.lock").read_text())["pid"] == holder.pid
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "1", "--eval-limit", "0",
                      "--max-examples", "20", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / ".kbit.lock").exists()

