"""Integration: the embedded SmolLM2-135M-Instruct, a short real qlora run, then kbit eval on it."""

import json

import pytest

from kbit.core.runs.record import read_metadata
from tests.conftest import run_kbit

pytestmark = pytest.mark.slow


def test_short_qlora_run_on_smollm2_then_eval(smollm2_run, tmp_path):
    out, result = smollm2_run
    record = read_metadata(out)
    assert record["base_model"]["name"] == "SmolLM2-135M-Instruct" and record["base_model"]["origin"] == "default"
    history = record["loss_history"]
    assert history[-1]["loss"] < history[0]["loss"], history
    merge = record["merge"]
    assert merge["base"] == "dequantized" and merge["top1_agreement"] >= 0.999, merge
    assert out.name in result.stdout and "held-out exact match" in result.stdout

    report = tmp_path / "report"
    evaluated = run_kbit("eval", str(out), "--limit", "10", "--max-new-tokens", "8", "--out", str(report), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    rows = json.loads((report / "report.json").read_text())["rows"]
    variants = {row["variant"] for row in rows}
    assert {"adapter", "merged"} <= variants, variants
    for name in ("report.md", "report.png", "predictions.jsonl"):
        assert (report / name).is_file(), name
