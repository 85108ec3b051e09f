"""Planning (what gets evaluated) and each loader path: base, base through a method, adapter, merged, quantized."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from kbit.core.system.device import DeviceInfo
from kbit.core.errors import ConfigError
from kbit.core.evaluate.loading import Selection, latest_run, load_candidate, plan_candidates
from tests.conftest import copy_run

CPU = DeviceInfo.cpu(memory_bytes=8 << 30)


def _has_4bit(model) -> bool:
    import bitsandbytes as bnb

    return any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def _variants(candidates):
    return [c.display_variant for c in candidates]


@pytest.mark.slow
def test_a_run_expands_to_base_adapter_and_merged(tiny_run, tiny):
    candidates, gaps = plan_candidates(Selection(paths=(str(tiny_run),)), CPU)
    assert _variants(candidates) == ["base", "adapter", "merged"] and gaps == []
    base, adapter, merged = candidates
    assert base.path == str(tiny.resolve()) and base.spec is None
    assert adapter.base_path == str(tiny.resolve()) and adapter.method == "qlora"
    assert adapter.spec.extras["quant_type"] == "nf4"
    assert merged.path == str(tiny_run / "merged") and merged.produced_by == "qlora"
    assert {c.data.dataset for c in candidates} == {"arith"} and base.data.max_examples == 40


@pytest.mark.slow
def test_runs_sharing_a_base_and_a_split_evaluate_the_base_once(tiny_run, tmp_path):
    other = tmp_path / "again"
    record = copy_run(tiny_run, other, name="again")
    candidates, _ = plan_candidates(Selection(paths=(str(tiny_run), str(other)), variants=("base", "merged")), CPU)
    assert [c.variant for c in candidates] == ["base", "merged", "merged"]
    assert [c.label for c in candidates[1:]] == [record["name"], "again"]
    (other / "kbit.json").write_text(json.dumps(record))  # the same name: told apart by the folder given
    candidates, _ = plan_candidates(Selection(paths=(str(tiny_run), str(other)), variants=("merged",)), CPU)
    assert [c.label for c in candidates] == [f"{record['name']} ({tiny_run})", f"{record['name']} ({other})"]


@pytest.mark.slow
def test_adapter_loads_on_the_method_quantized_base(tiny_run):
    from peft import PeftModel

    candidates, _ = plan_candidates(Selection(paths=(str(tiny_run),), variants=("adapter",)), CPU)
    loaded = load_candidate(candidates[0], CPU)
    assert isinstance(loaded.model, PeftModel) and _has_4bit(loaded.model)
    assert any("lora_A" in name for name, _ in loaded.model.named_parameters())


@pytest.mark.slow
def test_merged_and_plain_base_load_plainly(tiny_run):
    import torch

    candidates, _ = plan_candidates(Selection(paths=(str(tiny_run),), variants=("base", "merged")), CPU)
    for candidate in candidates:
        model = load_candidate(candidate, CPU).model
        assert not _has_4bit(model) and model.dtype == torch.float32
        assert not hasattr(model, "peft_config")


def test_method_on_a_plain_model_adds_the_quantized_base(tiny):
    candidates, gaps = plan_candidates(Selection(paths=(str(tiny),), method="nf4"), CPU)  # an alias of qlora
    assert _variants(candidates) == ["base", "base+qlora"] and gaps == []
    assert not _has_4bit(load_candidate(candidates[0], CPU).model)
    assert _has_4bit(load_candidate(candidates[1], CPU).model)


@pytest.mark.slow
def test_quantized_artifact_loads_plainly_and_missing_variants_are_gaps(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "kbit.json", run / "kbit.json")
    shutil.copytree(tiny_run / "merged", run / "quantized")  # any model directory transformers loads
    candidates, gaps = plan_candidates(Selection(paths=(str(run),), variants=("adapter", "merged", "quantized")), CPU)
    assert _variants(candidates) == ["quantized"]
    assert [(g.variant, "no adapter/ artifact" in g.reason) for g in gaps] == [("adapter", True), ("merged", False)]
    assert load_candidate(candidates[0], CPU).model is not None
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        plan_candidates(Selection(paths=(str(run),), variants=("adapter",)), CPU)


@pytest.mark.slow
def test_no_paths_means_the_latest_run_by_metadata_time(tiny_run, tmp_path, monkeypatch):
    for name, when in (("older", 1_000_000), ("newer", 2_000_000)):
        (tmp_path / "runs" / name).mkdir(parents=True)
        shutil.copy(tiny_run / "kbit.json", tmp_path / "runs" / name / "kbit.json")
        os.utime(tmp_path / "runs" / name / "kbit.json", (when, when))
    assert latest_run(tmp_path / "runs").name == "newer"
    monkeypatch.chdir(tmp_path)
    candidates, gaps = plan_candidates(Selection(), CPU)  # the copy has no artifacts: only its base remains
    assert _variants(candidates) == ["base"] and candidates[0].source == str(Path("runs") / "newer")
    with pytest.raises(ConfigError, match="no runs under"):
        latest_run(tmp_path / "elsewhere")


@pytest.mark.slow
def test_dataset_override_and_seed_replace_the_runs_own(tiny_run, tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(10)))
    candidates, _ = plan_candidates(Selection(paths=(str(tiny_run),), variants=("merged",), dataset=str(data), seed=3), CPU)
    assert candidates[0].data.dataset == str(data) and candidates[0].data.seed == 3
    assert candidates[0].data.max_examples is None


@pytest.mark.slow
def test_a_run_without_recorded_settings_needs_dataset_unless_it_trained_on_a_builtin(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    data = json.loads((run / "kbit.json").read_text())
    data.pop("config")
    data["dataset"] = {**(data.get("dataset") or {}), "name": "qa", "source": "qa.jsonl"}
    (run / "kbit.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"no recorded settings .* \(qa.jsonl\) cannot be rebuilt; pass --dataset FILE"):
        plan_candidates(Selection(paths=(str(run),), variants=("merged",)), CPU)
    data["dataset"]["name"] = "arith"  # kbit 0.1's records: the built-in set's default split
    (run / "kbit.json").write_text(json.dumps(data))
    candidates, _ = plan_candidates(Selection(paths=(str(run),), variants=("merged",)), CPU)
    assert candidates[0].data.dataset == "arith"
