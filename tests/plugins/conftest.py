"""Fixtures for the built-in method tests: one tiny model per session and a CLI training helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbit.core.methods.registry import MISSING, default_registry
from tests.conftest import run_kbit

TRAIN_ARGS = ("--max-steps", "2", "--batch-size", "2", "--max-examples", "40", "--eval-limit", "2", "-o", "r=4")


def needs_backend(method: str) -> pytest.MarkDecorator:
    """Skip where METHOD's backend (a kbit extra) is not installed, giving the line that installs it.

    The bare environment (``pip install .``, no extras) runs the core tests only; with every extra
    installed (scripts/install.sh) the method is ready and nothing is skipped.
    """
    record = next(r for r in default_registry().records() if r.name == method)
    return pytest.mark.skipif(record.status == MISSING, reason=f"method '{method}' {record.error}")


def train_tiny(model: Path, method: str, output: Path, *options: str) -> dict:
    """``kbit train`` a tiny model for 2 steps with METHOD; returns the run's kbit.json (asserts success)."""
    extra = [arg for option in options for arg in ("-o", option)]
    result = run_kbit("train", "--model", str(model), "--method", method, *TRAIN_ARGS, *extra, "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((output / "kbit.json").read_text())
    assert record["status"] == "finished" and record["method"] == method
    assert record["train"]["steps"] == 2
    return record
