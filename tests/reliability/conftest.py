"""Fixtures of the bad-input tables (test_bad_input*.py) and the other reliability tests."""

from __future__ import annotations

import pytest

from tests.conftest import run_kbit


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """A finished run: the target that output commands must never destroy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "1", "--batch-size", "2",
                      "-o", "r=4", "--max-examples", "12", "--eval-limit", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))
    return tmp_path
