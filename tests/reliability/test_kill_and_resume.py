"""SIGKILL a real `kbit train` at several points, resume it, and compare with an uninterrupted run.

LoRA dropout is on, so the dropout masks after the resume depend on the restored RNG state too.
Measured here: the resumed run is bit-identical to the uninterrupted one (losses and adapter). The
tolerances below are kept small but not zero, for BLAS libraries that reorder sums between runs.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from kbit.testing import make_tiny_model
from tests.conftest import run_kbit

ARGS = ("--max-steps", "8", "--batch-size", "2", "-o", "r=4", "-o", "merge_after_train=false", "-o", "lora_dropout=0.1", "--max-examples", "60",
        "--eval-limit", "0", "--logging-steps", "1", "--save-steps", "2", "--seed", "3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _kill_after_checkpoint(tiny, out, checkpoint_step):
    process = subprocess.Popen([sys.executable, "-m", "kbit", "train", "--model", str(tiny), "--output", str(out), *ARGS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / f"checkpoint-{checkpoint_step}" / "trainer_state.json"
    deadline = time.time() + 300
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@pytest.mark.parametrize("kill_at", [2, 4, 6])
def test_resume_after_sigkill_matches_uninterrupted_run(tiny, reference, tmp_path, kill_at):
    out = tmp_path / "run"
    _kill_after_checkpoint(tiny, out, kill_at)
    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running" and not (out / "adapter").exists()
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((out / "kbit.json").read_text())
    expected = json.loads((reference / "kbit.json").read_text())
    assert resumed["status"] == "finished" and resumed["train"]["resumed_from"].startswith("checkpoint-")
    assert [h["step"] for h in resumed["loss_history"]] == list(range(1, 9))
    for got, want in zip(resumed["loss_history"], expected["loss_history"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), (got, want)
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # LoRA B starts at zero, so per-tensor relative error is meaningless early on; compare against
    # the largest adapter weight overall.
    scale = max(b[k].abs().max().item() for k in b)
    worst = max((a[k] - b[k]).abs().max().item() for k in a) / scale
    assert worst < 1e-5, f"adapter differs by {worst:.2e} relative to its largest weight"


def test_kill_during_post_training_quantization_leaves_nothing_that_looks_complete(plugin_site, tiny, tmp_path):
    plugin_site.add("kbit-slow-ptq", "1.0", {"toy": "kbit_slow_ptq"}, modules=("kbit_slow_ptq", "kbit_toy"))
    out = tmp_path / "run"
    args = ("train", "--method", "toy", "--model", str(tiny), "--output", str(out), "--max-steps", "2", "--batch-size", "2",
            "-o", "r=4", "--max-examples", "20", "--eval-limit", "0", "--save-steps", "2")
    process = subprocess.Popen([sys.executable, "-m", "kbit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=plugin_site.env(KBIT_SLOW_PTQ_SECONDS="600"))
    deadline = time.time() + 300
    while not list(out.glob(".quantized.tmp-*/stalled")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it reached quantization"

    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running" and "quantized" not in killed["artifacts"]
    assert not (out / "quantized").exists() and (out / "merged" / "config.json").is_file()

    result = run_kbit("train", "--resume", str(out), env=plugin_site.env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "removed .quantized.tmp-" in result.stderr
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "finished" and record["artifacts"]["quantized"] == "quantized"
    assert not (out / "quantized" / "stalled").exists()
    assert not [p.name for p in out.glob(".*") if p.name != ".kbit.lock"]
