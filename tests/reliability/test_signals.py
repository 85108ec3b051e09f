"""Ctrl-C and SIGTERM in the middle of a run: the run is marked interrupted, unlocked, and kbit exits 130/143."""

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_kbit

FAULTS = Path(__file__).parents[1] / "fixtures" / "faults.py"
ARGS = ("--max-steps", "4", "--batch-size", "2", "-o", "r=4", "--max-examples", "20", "--eval-limit", "0", "--save-steps", "2",
        "--logging-steps", "1")


def _kbit_lines(stderr: str) -> list[str]:
    """kbit's own lines (a progress bar may share the terminal line it ends on)."""
    return ["kbit: " + part.split("kbit: ", 1)[1] for line in stderr.splitlines() for part in line.split("\r")
            if "kbit: " in part]


@pytest.mark.slow
@pytest.mark.parametrize("sent, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_marks_the_run_interrupted_releases_the_lock_and_exits_with_its_code(tiny, tmp_path, sent, code):
    process, out = _stalled_run(tiny, tmp_path)
    process.send_signal(sent)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err[-2000:]
    said = _kbit_lines(err)
    assert "Traceback" not in err and len(said) == 1, err[-2000:]
    assert said[0] == ("kbit: interrupted" if sent == signal.SIGINT else "kbit: terminated by signal 15")
    assert f"kbit train --resume {out} continues it" in err  # the way on
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "interrupted" and record["error"]
    assert [h["step"] for h in record["loss_history"]] == [1, 2] and record["train"]["steps"] == 2  # what it trained
    assert not (out / ".kbit.lock").exists()
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "kbit.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_folder_made_unwritable_mid_run_reports_the_real_cause(tiny, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(FAULTS), "deny", "*/checkpoint-2/trainer_state.json", str(out), "--",
         "train", "--model", str(tiny), "--output", str(out), *ARGS], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    said = _kbit_lines(result.stderr)
    assert len(said) == 1 and "Permission denied" in said[0] and "trainer_state.json" in said[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "lock" not in said[0]


def _stalled_run(tiny, tmp_path) -> tuple[subprocess.Popen, Path]:
    """A tiny ``kbit train`` stopped in the middle of writing its second checkpoint (Popen: a shell's
    background job would start it with SIGINT ignored)."""
    out, flag = tmp_path / "run", tmp_path / "stalled"
    process = subprocess.Popen(
        [sys.executable, str(FAULTS), "stall", "*/checkpoint-2/trainer_state.json", str(flag), "--",
         "train", "--model", str(tiny), "--output", str(out), *ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not flag.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the signal"
    return process, out


SAID = {130: "kbit: interrupted", 143: "kbit: terminated by signal 15", 129: "kbit: terminated by signal 1"}


@pytest.mark.slow
@pytest.mark.parametrize("first, then, codes", [
    (signal.SIGINT, signal.SIGINT, (130,)),
    (signal.SIGTERM, signal.SIGTERM, (143,)),
    (signal.SIGTERM, signal.SIGINT, (143, 130)),  # both pending at once: Python handles SIGINT first
    (signal.SIGHUP, None, (129,)),
])
def test_repeated_signals_and_sighup_never_leave_the_run_running(tiny, tmp_path, first, then, codes):
    """The first signal stops the run; more of them close behind (two Ctrl-C, kill twice, here one
    every ~1 ms for 0.2 s, so some land while the final status is written) never cut that write short."""
    process, out = _stalled_run(tiny, tmp_path)
    process.send_signal(first)
    until = time.monotonic() + 0.2
    while then is not None and process.poll() is None and time.monotonic() < until:
        time.sleep(0.001)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(then)
    _, err = process.communicate(timeout=120)
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "interrupted" and record["error"], record["status"]
    assert not (out / ".kbit.lock").exists()
    assert process.returncode in codes, err[-2000:]
    said = _kbit_lines(err)
    assert "Traceback" not in err and len(said) == 1, err[-2000:]
    assert said[0] == SAID[process.returncode]


@pytest.mark.slow
def test_a_full_disk_names_the_run_folder_and_marks_the_run_failed(tiny, tmp_path):
    """ENOSPC from a write (no file name) while the Trainer saves a checkpoint; even kbit.json cannot be
    written anew, so the status goes over the old record in place."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(FAULTS), "full", "*/checkpoint-2/trainer_state.json", str(out), "--",
         "train", "--model", str(tiny), "--output", str(out), *ARGS], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    said = _kbit_lines(result.stderr)
    assert len(said) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert said[0].startswith("kbit: error: No space left on device") and f"({out})" in said[0], said[0]
    assert "free space on that disk" in said[0]
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert not (out / ".kbit.lock").exists()
