"""kbit's pytest plugin (entry point ``pytest11``), loaded by pytest wherever kbit is installed.

Fixtures for plugin authors (and kbit's own tests):

- ``kbit_tiny_model``: a tiny random Llama model folder with a tokenizer and chat template, made
  once per test session (no download);
- ``kbit_cli``: runs the real ``kbit`` command line in a subprocess, offline, and returns the
  ``subprocess.CompletedProcess``: ``kbit_cli("train", "--method", "my-method", "--max-steps", "2")``.

Nothing here imports torch until a fixture is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def kbit_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM folder (Llama architecture, widths multiples of 64)."""
    from kbit.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("kbit-tiny") / "model")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m kbit ARGS`` in a subprocess, offline, as a user would run it."""
    environment = {**os.environ, **OFFLINE, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kbit", *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=timeout)


@pytest.fixture
def kbit_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run the kbit CLI in a subprocess from a fresh temporary folder (so ``runs/`` lands there)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        return run_cli(*args, env=env, cwd=tmp_path, timeout=timeout)

    return run
