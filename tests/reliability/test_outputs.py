import pytest
"""Output commands own what they write and nothing else (the rule in kbit/core/runs/outputs.py)."""

import json
import shutil
import subprocess
import sys


from kbit.core.model.merge import logit_agreement
from tests.conftest import run_kbit

ARGS = ("--max-steps", "1", "--batch-size", "2", "-o", "r=4", "--max-examples", "12", "--eval-limit", "0")


def _train(tiny, out, *extra, umask=0o022):
    """``kbit train`` in a subprocess started with ``umask``, as a user's shell would start it."""
    code = f"import os, sys; os.umask({umask}); from kbit.core.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "train", "--model", str(tiny), "--output", str(out), *ARGS, *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_artifacts_follow_the_umask(tiny, tmp_path):
    """Every file of adapter/, merged/ and the GGUF (which safetensors and mkstemp make 0600) is 0644
    under umask 022, every folder 0755."""
    out = tmp_path / "run"
    result = _train(tiny, out)
    assert result.returncode == 0, result.stderr[-2000:]
    code = "import os, sys; os.umask(0o022); from kbit.core.cli import main; main(sys.argv[1:])"
    exported = subprocess.run([sys.executable, "-c", code, "export", str(out), "--type", "f16", "--limit", "4"],
                              capture_output=True, text=True, timeout=900)
    assert exported.returncode == 0, exported.stderr[-2000:]
    for folder in ("adapter", "merged", "gguf"):
        assert (out / folder).stat().st_mode & 0o777 == 0o755, folder
        modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in (out / folder).rglob("*")}
        assert modes and set(modes.values()) == {"0o644"}, modes
    assert any(name.endswith(".gguf") for name in modes)
    assert (out / "kbit.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_overwrite_never_follows_a_symlink_inside_the_old_run(tiny, tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert _train(tiny, out).returncode == 0
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not kbit's")
    shutil.rmtree(out / "adapter")
    (out / "adapter").symlink_to(elsewhere, target_is_directory=True)
    result = _train(tiny, out, "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (elsewhere / "precious.txt").read_text() == "not kbit's"
    assert not (out / "adapter").is_symlink() and (out / "adapter" / "adapter_config.json").is_file()
    assert not [p.name for p in tmp_path.glob(".*")] and not (out / ".kbit.lock").exists()


@pytest.mark.slow
def test_overwrite_refuses_a_symlink_to_other_data(tiny, tmp_path):
    elsewhere, link = tmp_path / "elsewhere", tmp_path / "link"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not kbit's")
    link.symlink_to(elsewhere, target_is_directory=True)
    result = _train(tiny, link, "--overwrite")
    assert result.returncode == 2 and "is a symlink to" in result.stderr
    assert [p.name for p in elsewhere.iterdir()] == ["precious.txt"]


@pytest.mark.slow
def test_eval_replaces_only_its_own_earlier_report(tiny, tmp_path):
    run, report = tmp_path / "run", tmp_path / "report"
    assert _train(tiny, run).returncode == 0
    for _ in range(2):  # the second time, the first report is its own: replaced
        result = run_kbit("eval", str(run), "--variant", "merged", "--limit", "2", "--out", str(report))
        assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((report / "report.json").read_text())["kind"] == "eval"
    result = run_kbit("eval", str(run), "--variant", "merged", "--limit", "2", "--out", str(run))
    assert result.returncode == 2 and "a run is never the report folder" in result.stderr
    assert (run / "adapter").is_dir() and (run / "merged").is_dir()
    assert json.loads((run / "kbit.json").read_text())["kind"] == "run"


@pytest.mark.slow
def test_huge_learning_rate_stops_at_the_first_non_finite_adapter_weight(tiny, tmp_path):
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "3", "--batch-size", "2",
                      "-o", "r=4", "--max-examples", "12", "--eval-limit", "0", "--lr", "1e39", "--warmup-ratio", "0")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "became non-finite at step 1" in result.stderr
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "failed" and not (out / "merged").exists()


def test_merge_check_counts_non_finite_logits_as_disagreement():
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 5)
            logits[..., 1] = self.value
            return type("Out", (), {"logits": logits})()

    batch = [{"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long)}]
    broken = logit_agreement(Logits(1.0), Logits(float("nan")), batch)
    assert broken["top1_agreement"] == 0.0 and broken["max_abs_logit_diff"] == float("inf")
    same = logit_agreement(Logits(1.0), Logits(1.0), batch)
    assert same["top1_agreement"] == 1.0 and same["max_abs_logit_diff"] == 0.0


@pytest.mark.slow
def test_quantize_output_refuses_the_run_itself(tiny, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny, run).returncode == 0
    before = sorted(p.name for p in run.iterdir())
    result = run_kbit("quantize", str(run), "--method", "gptq", "--output", str(run))
    assert result.returncode == 2 and "is the kbit run" in result.stderr
    assert sorted(p.name for p in run.iterdir()) == before
