"""Checks shared by the gptq and awq tests (a helper module, not a test file)."""

from __future__ import annotations

import json
from pathlib import Path

from kbit.core.measure.metrics import checkpoint_packed_bits
from kbit.core.quantize import quantize_path
from tests.conftest import run_kbit
from tests.plugins.conftest import train_tiny

FAST = {"calibration_samples": "4", "calibration_max_length": "48"}


def train_and_quantize(tiny: Path, method: str, run: Path, bits: int, symmetric: bool) -> dict:
    """Train METHOD on the tiny model through the CLI and check run/quantized loads and runs."""
    import torch
    from transformers import AutoModelForCausalLM

    record = train_tiny(tiny, method, run, *(f"{k}={v}" for k, v in FAST.items()))
    assert record["artifacts"]["quantized"] == "quantized"
    info = record["quantize"]
    assert info["format"] == "compressed-tensors" and info["calibration_samples"] == 4 and info["seconds"] > 0
    weights = info["config_groups"]["group_0"]["weights"]
    # tiny widths are 64 (hidden) and 128 (intermediate): 'auto' picks 64
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (bits, 64, symmetric)
    assert record["spec"]["group_size"] == 64 and record["spec"]["extras"]["group_size_requested"] == "auto"
    model = AutoModelForCausalLM.from_pretrained(run / "quantized")
    assert model(input_ids=torch.tensor([[5, 6, 7]])).logits.isfinite().all()
    # what ships is scored in the run, on the adapter's held-out items
    variants = record["metrics"]["variants"]
    assert list(variants) == ["adapter", "merged", "quantized"]
    assert {v["items"] for v in variants.values()} == {record["metrics"]["after"]["items"]} == {2}
    assert variants["quantized"]["model"] == "quantized/ as saved (compressed-tensors)"
    for v in variants.values():
        assert v["exact_match_hits"] == round(v["exact_match"] * v["items"]) and len(v["exact_match_ci95"]) == 2
    return record


def requantize_run(run: Path, method: str) -> dict:
    """``kbit quantize RUN`` (in process): new options re-quantize run/merged into run/quantized."""
    target, record = quantize_path(run, method, {**FAST, "bits": "8", "group_size": "32"}, None)
    assert target == run / "quantized"
    on_disk = json.loads((run / "kbit.json").read_text())
    weights = on_disk["quantize"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"]) == (8, 32)
    assert on_disk["artifacts"]["quantized"] == "quantized" and on_disk["kind"] == "run"
    assert "quantized" not in on_disk["metrics"]["variants"]  # the training run's score was the replaced model's
    # bits per weight as the checkpoint stores them (transformers decompresses it on a CPU load)
    packed = checkpoint_packed_bits(run / "quantized")
    assert len(packed) == 14  # 7 linear layers × 2 blocks
    assert 8 < sum(bits for bits, _ in packed.values()) / sum(n for _, n in packed.values()) < 9
    # quantized out of the run: scored, like the run's own quantized/, on the run's held-out split
    from kbit.core.evaluate.loading import Selection, plan_candidates
    from kbit.core.system.device import DeviceInfo

    outside, _ = quantize_path(run, method, dict(FAST), str(run.parent / "outside"))
    [candidate], _ = plan_candidates(Selection(paths=(str(outside),)), DeviceInfo.cpu())
    assert candidate.variant == "quantized" and candidate.data.trained_on == (on_disk["name"], on_disk["dataset"]["fingerprint"])
    # a compressed checkpoint is not a GGUF source: export names the run's full-precision model instead
    refused = run_kbit("export", str(run / "quantized"), "--output", str(run.parent / "q.gguf"))
    assert refused.returncode == 2 and "holds a compressed-tensors checkpoint" in refused.stderr
    assert f"kbit export {run}" in refused.stderr and not (run.parent / "q.gguf").exists()
    return record
