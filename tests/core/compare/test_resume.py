"""A comparison killed while a run is being written is continued: the run is resumed, not trained again."""

from __future__ import annotations

import pytest

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kbit.core.compare.pipeline import run_compare
from kbit.core.compare.plan import build_compare_config

FAULTS = Path(__file__).parents[2] / "fixtures" / "faults.py"
ARGS = ("--methods", "lora", "--max-steps", "2", "--batch-size", "2", "--max-examples", "20", "--limit", "3",
        "-o", "r=4")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_run_killed_while_merging_is_resumed(kbit_tiny_model, tmp_path):
    out, flag = tmp_path / "cmp", tmp_path / "stalled"
    # SIGKILL the comparison at the moment the merged model is being written (adapter/ already saved).
    command = [sys.executable, str(FAULTS), "stall", "*/.merged.tmp-*/config.json", str(flag), "--",
               "compare", "--model", str(kbit_tiny_model), "--out", str(out), *ARGS]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    deadline = time.time() + 600
    while not flag.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the comparison ended before the merge could be interrupted"
    run = out / "runs" / "lora"
    killed = json.loads((run / "kbit.json").read_text())
    assert killed["status"] == "running" and not (run / "merged").exists()
    adapter = _sha(run / "adapter" / "adapter_model.safetensors")

    lines: list[str] = []
    config = build_compare_config(methods="lora", model=str(kbit_tiny_model), max_steps=2, batch_size=2,
                                  max_examples=20, limit=3, options={"r": "4"}, out=str(out))
    result = run_compare(config, progress=lines.append)
    entry = result.report["methods"][0]
    assert entry["action"] == "resumed" and entry["status"] == "finished", entry
    assert lines[0] == f"lora: resuming the unfinished run {run.resolve()}"
    record = json.loads((run / "kbit.json").read_text())
    assert record["status"] == "finished" and (run / "merged" / "config.json").is_file()
    assert record["loss_history"] == killed["loss_history"] and record["train"]["steps"] == 2
    assert _sha(run / "adapter" / "adapter_model.safetensors") == adapter  # not trained again
    assert [r["variant"] for r in result.report["rows"]] == ["base", "adapter", "merged"]
