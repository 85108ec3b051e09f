"""SIGKILL a real `kbit train` at several points, resume it, and compare with an uninterrupted run.

LoRA dropout is on, so the dropout masks after the resume depend on the restored RNG state too. The
adapter trains in float32 (the default) or, in one case, bfloat16: the Trainer reloads a checkpoint's
adapter in float32, and kbit must put it back in the run's dtype.
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
    """The uninterrupted run for each adapter dtype, trained once per module."""
    runs = {}

    def uninterrupted(adapter_dtype):
        if adapter_dtype not in runs:
            out = tmp_path_factory.mktemp("ref") / "run"
            result = run_kbit("train", "--model", str(tiny), "--output", str(out), *ARGS, "-o", f"adapter_dtype={adapter_dtype}")
            assert result.returncode == 0, result.stderr[-2000:]
            runs[adapter_dtype] = out
        return runs[adapter_dtype]

    return uninterrupted


def _kill_after_checkpoint(tiny, out, checkpoint_step, adapter_dtype):
    process = subprocess.Popen([sys.executable, "-m", "kbit", "train", "--model", str(tiny), "--output", str(out), *ARGS,
                                "-o", f"adapter_dtype={adapter_dtype}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / f"checkpoint-{checkpoint_step}" / "trainer_state.json"
    deadline = time.time() + 300
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@pytest.mark.parametrize("kill_at, adapter_dtype", [(2, "float32"), (4, "float32"), (6, "float32"), (4, "bfloat16")])
def test_resume_after_sigkill_matches_uninterrupted_run(tiny, reference, tmp_path, kill_at, adapter_dtype):
    out = tmp_path / "run"
    _kill_after_checkpoint(tiny, out, kill_at, adapter_dtype)
    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running" and not (out / "adapter").exists()
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((out / "kbit.json").read_text())
    expected = json.loads((reference(adapter_dtype) / "kbit.json").read_text())
    assert resumed["status"] == "finished" and resumed["train"]["resumed_from"].startswith("checkpoint-")
    assert [h["step"] for h in resumed["loss_history"]] == list(range(1, 9))
    for got, want in zip(resumed["loss_history"], expected["loss_history"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), (got, want)
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(reference(adapter_dtype) / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert {str(t.dtype) for t in a.values()} == {f"torch.{adapter_dtype}"}
    # LoRA B starts at zero, so per-tensor relative error is meaningless early on; compare against
    # the largest adapter weight overall.
    scale = max(b[k].float().abs().max().item() for k in b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a) / scale
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
