"""Run folders damaged between runs, resumed and evaluated through the CLI.

A sealed checkpoint damaged since (truncated adapter, broken trainer_state.json, an optimizer.pt that
would run pickled code) is removed with a line saying why, and the resume falls back to the previous
one, finishing as the uninterrupted run did; a damaged adapter/ is read again from the final
checkpoint; with checkpoints/ gone the resume says it trains from step 1; eval of a run with no
adapter yet says so beside the base row.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import copy_run, run_kbit
from tests.core.train.test_checkpoints import _RunsCode, _truncate

ARGS = ("--max-steps", "6", "--save-steps", "2", "--batch-size", "2", "-o", "r=4", "-o", "merge_after_train=false",
        "--max-examples", "20", "--eval-limit", "0", "--logging-steps", "1", "--seed", "3")


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished 6-step run that kept checkpoint-4 and checkpoint-6."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    return out


def _killed_after_last_checkpoint(finished: Path, out: Path) -> Path:
    """A copy of ``finished`` as a kill between the last checkpoint and the adapter's save leaves it."""
    shutil.copytree(finished, out)
    shutil.rmtree(out / "adapter")
    record = json.loads((out / "kbit.json").read_text())
    record.update(status="running", artifacts={})
    (out / "kbit.json").write_text(json.dumps(record))
    return out


DAMAGE = {
    "truncated adapter": (lambda c, flag: _truncate(c / "adapter_model.safetensors"), "its adapter weights are corrupt or truncated"),
    "broken trainer state": (lambda c, flag: (c / "trainer_state.json").write_text('{"global_step": 6, "max_st'),
                             "its trainer_state.json is damaged"),
    "pickled optimizer": (lambda c, flag: torch.save({"state": _RunsCode(flag)}, c / "optimizer.pt"),
                          "its optimizer.pt is not a plain tensor file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, kind):
    spoil, reason = DAMAGE[kind]
    out = _killed_after_last_checkpoint(finished, tmp_path / "run")
    flag = tmp_path / "CODE_RAN"
    spoil(out / "checkpoints" / "checkpoint-6", flag)
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in result.stderr.splitlines() if "removed checkpoint-6" in line]
    assert len(said) == 1 and reason in said[0] and "resuming from checkpoint-4 instead" in said[0], result.stderr[-2000:]
    assert "weights_only" not in result.stderr and not flag.exists()
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "finished" and record["train"]["resumed_from"] == "checkpoint-4"
    assert record["train"]["steps"] == 6 and [h["step"] for h in record["loss_history"]] == list(range(1, 7))
    reference = json.loads((finished / "kbit.json").read_text())
    for got, want in zip(record["loss_history"], reference["loss_history"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), (got, want)
    a, b = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(finished / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in b)


@pytest.mark.slow
def test_a_damaged_adapter_folder_is_read_again_from_the_final_checkpoint(finished, tmp_path):
    """A run stopped after saving adapter/ (e.g. while merging), whose adapter was damaged since."""
    out = tmp_path / "run"
    copy_run(finished, out, status="running")
    _truncate(out / "adapter" / "adapter_model.safetensors")
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in result.stderr.splitlines() if "adapter/ cannot be used" in line]
    assert len(said) == 1 and "corrupt or truncated" in said[0], result.stderr[-2000:]
    resumed = json.loads((out / "kbit.json").read_text())
    assert resumed["status"] == "finished" and resumed["train"]["resumed_from"] == "checkpoint-6"
    a, b = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(finished / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b), "the adapter was trained again"


@pytest.mark.slow
def test_a_resume_without_checkpoints_says_it_trains_from_step_1(finished, tmp_path):
    out = _killed_after_last_checkpoint(finished, tmp_path / "run")
    shutil.rmtree(out / "checkpoints")
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in result.stderr.splitlines() if "no checkpoint to resume from" in line]
    assert len(said) == 1 and "training starts again from step 1" in said[0], result.stderr[-2000:]
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "finished" and record["train"]["resumed_from"] is None and record["train"]["steps"] == 6


@pytest.mark.slow
def test_eval_of_a_run_with_no_adapter_yet_says_so(finished, tmp_path):
    out = _killed_after_last_checkpoint(finished, tmp_path / "run")
    result = run_kbit("eval", str(out), "--limit", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "report"), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report == {"out_dir": str((tmp_path / "report").resolve()),  # report.json as written, where it is
                      **json.loads((tmp_path / "report" / "report.json").read_text())}
    assert [row["variant"] for row in report["rows"]] == ["base"]
    gaps = [g for g in report["gaps"] if g["variant"] == "adapter"]
    assert len(gaps) == 1 and "no adapter/ artifact yet" in gaps[0]["reason"] and "status running" in gaps[0]["reason"]
    assert f"kbit train --resume {out}" in gaps[0]["reason"]


@pytest.mark.slow
def test_a_base_changed_since_the_run_is_refused_by_resume_and_eval(finished, tiny, tmp_path):
    """A local base folder edited after a run trained on it: resuming would train its last steps on other weights
    (and record the old revision), evaluating would score the adapter on a base it never saw."""
    from safetensors.torch import save_file

    base = tmp_path / "base"
    shutil.copytree(tiny, base)
    out = _killed_after_last_checkpoint(finished, tmp_path / "run")
    record = json.loads((out / "kbit.json").read_text())
    record["base_model"]["path"] = record["config"]["model"] = str(base)
    (out / "kbit.json").write_text(json.dumps(record))
    weights = load_file(base / "model.safetensors")
    name = next(n for n in weights if n.endswith("down_proj.weight"))
    weights[name] = weights[name] + 0.01
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    for command in (("train", "--resume", str(out)),
                    ("eval", str(out), "--limit", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "report"))):
        result = run_kbit(*command)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"base model {base} of run {out} changed since the run trained on it" in result.stderr
    assert json.loads((out / "kbit.json").read_text()) == record and not (tmp_path / "report").exists()


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing(finished, tiny, tmp_path):
    out, base = tmp_path / "run", tmp_path / "base"
    shutil.copytree(finished, out)
    shutil.copytree(tiny, base)
    record = json.loads((out / "kbit.json").read_text())
    record["base_model"]["path"] = record["config"]["model"] = str(base)
    (out / "kbit.json").write_text(json.dumps(record))
    (base / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)  # edited since
    before = (out / "kbit.json").read_bytes()
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished already; nothing to resume" in result.stderr
    assert (out / "kbit.json").read_bytes() == before  # not stamped "resumed", not scored again
