"""kbit's pytest plugin (entry point ``pytest11``), loaded by pytest wherever kbit is installed.

Fixtures for plugin authors (and kbit's own tests):

- ``kbit_tiny_model``: a tiny random Llama model folder with a tokenizer and chat template, made
  once per test session (no download);
- ``kbit_tiny_model_factory``: ``make(hidden_size=256, ...)``, a tiny model of other widths, made once per
  distinct config (``MethodContract.tiny_config`` uses it);
- ``kbit_cli``: runs the real ``kbit`` command line in a subprocess, offline, and returns the
  ``subprocess.CompletedProcess``: ``kbit_cli("train", "--method", "my-method", "--max-steps", "2")``.

Nothing here imports torch until a fixture is used.
"""

from __future__ import annotations

import json

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="session")
def kbit_tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make(**config)``: a tiny model folder built by ``make_tiny_model(**config)`` (``hidden_size=256``,
    ``intermediate_size=512`` …), made once per distinct config in a test session."""
    from kbit.testing.tiny import make_tiny_model

    made: dict[str, Path] = {}

    def make(**config: Any) -> Path:
        key = json.dumps(config, sort_keys=True)  # values may be dicts (rope_scaling …)
        if key not in made:
            made[key] = make_tiny_model(tmp_path_factory.mktemp("kbit-tiny") / "model", **config)
        return made[key]

    return make


@pytest.fixture(scope="session")
def kbit_tiny_model(kbit_tiny_model_factory: Callable[..., Path]) -> Path:
    """A tiny random causal LM folder (Llama architecture, widths multiples of 64)."""
    return kbit_tiny_model_factory()


def run_cli(*args: str, env: Mapping[str, str | None] | None = None, cwd: str | Path | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m kbit ARGS`` in a subprocess, offline, as a user would run it.

    The subprocess gets this process's environment without its kbit settings (``KBIT_*`` variables
    other than ``KBIT_CACHE``, so a developer's plugin or allocator settings do not leak into a test),
    with the hub switched off (``OFFLINE``), and then ``env``'s variables added or overriding (a
    variable given as None is removed, e.g. ``{"HF_HUB_OFFLINE": None}`` for a test of the hub path)."""
    return subprocess.run([sys.executable, "-m", "kbit", *map(str, args)], capture_output=True, text=True,
                          env=cli_environment(env), cwd=cwd, timeout=timeout)


def cli_environment(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment ``run_cli`` gives the command (see there), for a test that starts kbit its own way."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KBIT_") or k == "KBIT_CACHE"}
    merged = {**inherited, **OFFLINE, **(env or {})}
    return {k: v for k, v in merged.items() if v is not None}


@pytest.fixture
def kbit_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """Run the kbit CLI in a subprocess from a fresh temporary folder (so ``runs/`` lands there)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        return run_cli(*args, env=env, cwd=tmp_path, timeout=timeout)

    return run
