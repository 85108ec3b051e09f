"""The example external plugin in examples/kbit-quanto: installed, discovered, selected and trained."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_kbit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kbit-quanto"


def _installed_here() -> bool:
    try:
        dist = importlib.metadata.distribution("kbit-quanto")
    except importlib.metadata.PackageNotFoundError:
        return False
    direct = dist.read_text("direct_url.json") or "{}"
    return str(EXAMPLE) in json.loads(direct).get("url", "").replace("file://", "")


@pytest.fixture(scope="module")
def installed() -> None:
    """``pip install --no-deps -e examples/kbit-quanto`` unless this checkout's copy is already installed."""
    if not _installed_here():
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(EXAMPLE)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]


def test_listed_by_kbit_methods(installed):
    result = run_kbit("methods", "--json")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("quanto-int8", "quanto-int4"):
        assert records[name]["status"] == "ready", records[name]["error"]
        assert records[name]["distribution"] == "kbit-quanto" and not records[name]["builtin"]
        assert records[name]["capabilities"]["quantized_training"]


@pytest.mark.slow
def test_selected_by_name_and_trained(installed, tiny, tmp_path):
    model = tiny
    run = tmp_path / "run"
    result = run_kbit("train", "--model", str(model), "--method", "quanto-int8", "--max-steps", "2", "--batch-size", "2",
                      "-o", "r=4", "--max-examples", "40", "--eval-limit", "2", "--output", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "kbit.json").read_text())
    assert record["status"] == "finished" and record["method"] == "quanto-int8"
    assert record["method_plugin"]["distribution"] == "kbit-quanto"
    assert record["train"]["steps"] == 2 and record["artifacts"]["merged"] == "merged"
    assert record["merge"]["base"] == "dequantized" and record["merge"]["top1_agreement"] == 1.0
    assert set(record["method_plugin"]["sources"]) == {"kbit_quanto"}

    # The plugin's source edited without a new version: eval still scores the adapter and says its base may differ.
    def adapter_eval():
        return run_kbit("eval", str(run), "--variant", "adapter", "--limit", "2", "--max-new-tokens", "2",
                        "--out", str(tmp_path / "report"))

    unchanged = adapter_eval()
    assert unchanged.returncode == 0 and "source files have changed" not in unchanged.stderr, unchanged.stderr[-2000:]
    record["method_plugin"]["sources"]["kbit_quanto"] = "0123456789abcdef"
    (run / "kbit.json").write_text(json.dumps(record))
    edited = adapter_eval()
    assert edited.returncode == 0, edited.stderr[-2000:]
    assert "method 'quanto-int8' of kbit-quanto 0.2.0, whose source files have changed since under the same version" \
           in " ".join(edited.stderr.split())
