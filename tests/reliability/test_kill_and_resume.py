"""SIGKILL a real `kbit train` at several points, resume it, and compare with an uninterrupted run.

Two families:
- qlora with LoRA dropout on, killed right after checkpoint 4, with a float32 and a bfloat16 adapter:
  the Trainer reloads a checkpoint's adapter in float32, and kbit must put it back in the run's dtype.
- every stage that writes: killed while checkpoint 4 is half-written; and (one run, killed twice) in
  the middle of writing the merged model, then of post-training quantization; for micro-batches of 8
  and 16 (16 makes the last batch of each epoch a short one, where the Trainer's own resume arithmetic is off).

Measured here: the resumed run is bit-identical to the uninterrupted one (losses and adapter). The
tolerances below are kept small but not zero, for BLAS libraries that reorder sums between runs.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_kbit

QLORA_ARGS = ("--max-steps", "8", "--batch-size", "2", "-o", "r=4", "-o", "merge_after_train=false", "-o", "lora_dropout=0.1",
              "--max-examples", "60", "--eval-limit", "0", "--logging-steps", "1", "--save-steps", "2", "--seed", "3")
STAGE_ARGS = ("--method", "toy", "--max-steps", "6", "-o", "r=4", "--max-examples", "60", "--eval-limit", "0",
              "--logging-steps", "1", "--save-steps", "2", "--seed", "3")
FAULTS = Path(__file__).parents[1] / "fixtures" / "faults.py"


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """Uninterrupted runs, trained once per module and keyed by their extra arguments."""
    runs = {}

    def uninterrupted(*args, env=None):
        if args not in runs:
            out = tmp_path_factory.mktemp("ref") / "run"
            result = run_kbit("train", "--model", str(tiny), "--output", str(out), *args, env=env)
            assert result.returncode == 0, result.stderr[-2000:]
            runs[args] = out
        return runs[args]

    return uninterrupted


def _kill_when(command, flag: Path, env=None):
    """Start ``command``, SIGKILL it as soon as ``flag`` exists; fail if it ends first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not flag.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _assert_same_run(resumed_dir: Path, reference_dir: Path, steps: int, dtype: str = "float32") -> None:
    resumed = json.loads((resumed_dir / "kbit.json").read_text())
    expected = json.loads((reference_dir / "kbit.json").read_text())
    assert resumed["status"] == "finished", resumed.get("error")
    assert resumed["train"]["steps"] == expected["train"]["steps"] == steps
    assert [h["step"] for h in resumed["loss_history"]] == list(range(1, steps + 1))
    for got, want in zip(resumed["loss_history"], expected["loss_history"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), (got, want)
    a = load_file(resumed_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(reference_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert {str(t.dtype) for t in a.values()} == {f"torch.{dtype}"}
    # LoRA B starts at zero, so per-tensor relative error is meaningless early on; compare against
    # the largest adapter weight overall.
    scale = max(b[k].float().abs().max().item() for k in b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a) / scale
    assert worst < 1e-5, f"adapter differs by {worst:.2e} relative to its largest weight"
    assert not [p.name for p in resumed_dir.glob(".*")], "staging or lock files left behind"


@pytest.mark.slow
@pytest.mark.parametrize("adapter_dtype", ["float32", "bfloat16"])
def test_qlora_resume_after_sigkill_matches_uninterrupted_run(tiny, reference, tmp_path, adapter_dtype):
    out = tmp_path / "run"
    args = (*QLORA_ARGS, "-o", f"adapter_dtype={adapter_dtype}")
    command = [sys.executable, "-m", "kbit", "train", "--model", str(tiny), "--output", str(out), *args]
    _kill_when(command, out / "checkpoints" / "checkpoint-4" / "kbit-complete")
    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running" and not (out / "adapter").exists()
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "kbit.json").read_text())["train"]["resumed_from"] == "checkpoint-4"
    _assert_same_run(out, reference(*args), steps=8, dtype=adapter_dtype)


STALL_AT = {
    # the file being opened for writing where a run stalls until it is killed
    "checkpoint-write": "*/checkpoints/checkpoint-4/trainer_state.json",
    "merge": "*/.merged.tmp-*/config.json",
    "quantize": "*/.quantized.tmp-*/config.json",
}


def _stall_and_kill(tmp_path: Path, stage: str, kbit_args: list[str], env: dict[str, str]) -> None:
    flag = tmp_path / f"stalled-{stage}"
    _kill_when([sys.executable, str(FAULTS), "stall", STALL_AT[stage], str(flag), "--", *kbit_args], flag, env=env)


def _resumed(out: Path, env: dict[str, str]) -> tuple[dict, subprocess.CompletedProcess]:
    result = run_kbit("train", "--resume", str(out), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((out / "kbit.json").read_text()), result


def _assert_finished_like_uninterrupted(out: Path, resumed: dict, reference_dir: Path) -> None:
    assert resumed["artifacts"]["merged"] == "merged" and resumed["artifacts"]["quantized"] == "quantized"
    assert resumed["merge"]["top1_agreement"] == 1.0
    _assert_same_run(out, reference_dir, steps=6)
    assert not list((out / "checkpoints").glob("checkpoint-7"))


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["8", "16"])
def test_kill_while_a_checkpoint_is_written_then_resume(plugin_site, tiny, reference, tmp_path, batch):
    plugin_site.add("kbit-slow-ptq", "1.0", {"toy": "kbit_slow_ptq"}, modules=("kbit_slow_ptq", "kbit_toy"))
    env, out = plugin_site.env(), tmp_path / "run"
    args = (*STAGE_ARGS, "--batch-size", batch)
    _stall_and_kill(tmp_path, "checkpoint-write", ["train", "--model", str(tiny), "--output", str(out), *args], env)
    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running"
    assert not (out / "checkpoints" / "checkpoint-4" / "kbit-complete").exists() and not (out / "adapter").exists()

    resumed, result = _resumed(out, env)
    assert resumed["train"]["resumed_from"] == "checkpoint-2" and "removed checkpoint-4" in result.stderr
    _assert_finished_like_uninterrupted(out, resumed, reference(*args, env=env))


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["8", "16"])
def test_kill_while_merging_then_while_quantizing_then_resume(plugin_site, tiny, reference, tmp_path, batch):
    """Both kills come after training, so one run serves both: killed in the middle of writing merged/,
    resumed and killed again in the middle of post-training quantization, then resumed to the end."""
    plugin_site.add("kbit-slow-ptq", "1.0", {"toy": "kbit_slow_ptq"}, modules=("kbit_slow_ptq", "kbit_toy"))
    env, out = plugin_site.env(), tmp_path / "run"
    args = (*STAGE_ARGS, "--batch-size", batch)
    _stall_and_kill(tmp_path, "merge", ["train", "--model", str(tiny), "--output", str(out), *args], env)
    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running" and killed["artifacts"]["adapter"] == "adapter"  # trained: not again
    assert "merged" not in killed["artifacts"] and not (out / "quantized").exists()
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")

    _stall_and_kill(tmp_path, "quantize", ["train", "--resume", str(out)], env)
    killed = json.loads((out / "kbit.json").read_text())
    assert killed["status"] == "running" and killed["artifacts"]["merged"] == "merged"
    assert not (out / "quantized").exists()
    again = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all((again[k] == adapter[k]).all() for k in adapter), "the adapter was trained again"

    resumed, _ = _resumed(out, env)
    _assert_finished_like_uninterrupted(out, resumed, reference(*args, env=env))


@pytest.mark.slow
def test_training_already_finished_is_not_trained_again(tiny, tmp_path):
    """The Trainer, resumed from its final checkpoint in the middle of an epoch, would run one more step."""
    args = ("--max-steps", "3", "--save-steps", "2", "--batch-size", "16", "-o", "r=4", "--max-examples", "20",
            "--eval-limit", "0", "-o", "merge_after_train=false")
    out = tmp_path / "run"
    assert run_kbit("train", "--model", str(tiny), "--output", str(out), *args).returncode == 0
    record = json.loads((out / "kbit.json").read_text())
    final = load_file(out / "adapter" / "adapter_model.safetensors")
    # what a kill between the last checkpoint and the adapter's save leaves behind
    import shutil

    shutil.rmtree(out / "adapter")
    record.update(status="running", artifacts={})
    (out / "kbit.json").write_text(json.dumps(record))
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((out / "kbit.json").read_text())
    assert resumed["train"]["steps"] == 3 and resumed["train"]["resumed_from"] == "checkpoint-3"
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    again = load_file(out / "adapter" / "adapter_model.safetensors")
    assert all((again[k] == final[k]).all() for k in final)
