"""Fixtures for the evaluation tests: a tiny random model and a tiny trained run (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_kbit


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    """A finished qlora run on the tiny model: kbit.json, adapter/ and merged/."""
    run = tmp_path_factory.mktemp("eval-run") / "run"
    result = run_kbit("train", "--model", str(tiny), "--max-steps", "2", "--batch-size", "2", "-o", "r=4",
                      "-o", "compute_dtype=float32", "--max-examples", "40", "--eval-limit", "0", "--output", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "merged" / "config.json").is_file()
    return run
