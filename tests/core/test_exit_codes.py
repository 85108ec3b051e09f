"""One exit code per kind of failure: every failed fidelity check exits 1, whichever command ran it.

Each check fails for real here: a method whose trained model no merge reproduces (the merge check of
``kbit train``), and a tokenizer the GGUF vocabulary cannot carry (the check of ``kbit export`` and of
a run's own deploy file, written by ``kbit train``).
"""

from __future__ import annotations

import json
import shutil

import pytest

from kbit.core.runs.record import read_metadata
from tests.conftest import run_kbit

TRAIN = ("--max-steps", "2", "--batch-size", "2", "-o", "r=4", "--max-examples", "24", "--eval-limit", "0")
FAILED_CHECK = 1  # FidelityError.exit_code, as the README documents it; bad input exits 2


def _error_line(stderr: str) -> str:
    """The one ``kbit: error:`` line (a progress bar may leave a partial line before it)."""
    [line] = [line[line.index("kbit: error:"):] for line in stderr.splitlines() if "kbit: error:" in line]
    return line


def _lowercasing(tiny, target):
    """The tiny model with a lowercasing tokenizer normaliser, which a GGUF vocabulary cannot carry:
    the file tokenizes "What" differently, so every export of it fails its check."""
    shutil.copytree(tiny, target)
    spec = json.loads((target / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return target


@pytest.mark.slow
def test_a_failed_merge_check_exits_1(plugin_site, tiny, tmp_path):
    plugin_site.add("kbit-drift", "1.0", {"toy": "kbit_drift"}, modules=("kbit_drift",))
    out = tmp_path / "run"
    result = run_kbit("train", "--method", "toy", "--model", str(tiny), "--output", str(out), *TRAIN,
                      env=plugin_site.env())
    assert result.returncode == FAILED_CHECK, result.stderr[-2000:]
    assert _error_line(result.stderr).startswith("kbit: error: merge check failed: the merged model")
    assert read_metadata(out)["status"] == "failed"
    assert (out / "adapter").is_dir() and not (out / "merged").exists()


@pytest.mark.slow
def test_a_failed_export_check_exits_1(tiny, tmp_path):
    out = tmp_path / "out" / "lowercasing.gguf"
    out.parent.mkdir()
    result = run_kbit("export", str(_lowercasing(tiny, tmp_path / "lowercasing")), "--output", str(out), "--limit", "4")
    assert result.returncode == FAILED_CHECK, result.stderr[-2000:]
    assert _error_line(result.stderr).startswith("kbit: error: the GGUF's tokenizer encodes 4 of 4 held-out items")
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_a_failed_check_of_the_runs_own_deploy_file_exits_1(plugin_site, tiny, tmp_path):
    plugin_site.add("kbit-deploys", "1.0", {"toy": "kbit_deploys"}, modules=("kbit_deploys",))
    out = tmp_path / "run"
    result = run_kbit("train", "--method", "toy", "--model", str(_lowercasing(tiny, tmp_path / "lowercasing")),
                      "--output", str(out), *TRAIN, env=plugin_site.env())
    assert result.returncode == FAILED_CHECK, result.stderr[-2000:]
    assert _error_line(result.stderr).startswith("kbit: error: the GGUF's tokenizer encodes")
    assert read_metadata(out)["status"] == "failed"
    assert (out / "merged" / "config.json").is_file() and not list(out.glob("gguf/*.gguf"))
