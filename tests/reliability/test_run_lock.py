"""Run-directory ownership: a live lock refuses a second run; a dead process's lock is taken over."""

import json
import os
import subprocess
import sys

import pytest

from kbit.testing import make_tiny_model
from tests.conftest import run_kbit

ARGS = ("--max-steps", "8", "--batch-size", "2", "-o", "r=4", "-o", "merge_after_train=false", "--max-examples", "60",
        "--eval-limit", "0", "--logging-steps", "1", "--save-steps", "2", "--seed", "3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_second_run_on_a_locked_directory_is_refused_and_stale_lock_taken_over(tiny, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".kbit.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "1", "--eval-limit", "0")
        assert result.returncode == 2 and f"in use by process {sleeper.pid}" in result.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "1", "--eval-limit", "0",
                      "--max-examples", "20", "--batch-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / ".kbit.lock").exists()
