"""Shared fixtures: throwaway plugin distributions on a path, and running the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from kbit.testing.pytest_plugin import run_cli

FIXTURES = Path(__file__).parent / "fixtures"


class PluginSite:
    """A directory of real (uninstalled) distributions: modules plus ``*.dist-info`` metadata."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, dist: str, version: str, entry_points: dict[str, str], modules: tuple[str, ...] = ()) -> None:
        for module in modules:
            shutil.copy(FIXTURES / "plugins" / f"{module}.py", self.root / f"{module}.py")
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[kbit.methods]\n{lines}")

    def entry_points(self):
        import importlib.metadata

        eps = []
        for dist in importlib.metadata.distributions(path=[str(self.root)]):
            eps.extend(ep for ep in dist.entry_points if ep.group == "kbit.methods")
        own = importlib.metadata.entry_points(group="kbit.methods")
        return [*own, *eps]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KBIT_")}
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), env.get("PYTHONPATH", "")])
        env.update(extra)
        return env


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PluginSite:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield PluginSite(root)
    for name in ("kbit_toy", "kbit_broken", "kbit_import_error"):
        sys.modules.pop(name, None)


# One tiny random model per test session: kbit's pytest plugin (kbit.testing.pytest_plugin) provides it
# as ``kbit_tiny_model``, as it does for plugin authors; ``tiny`` is the short name kbit's own tests use.
@pytest.fixture(scope="session")
def tiny(kbit_tiny_model: Path) -> Path:
    return kbit_tiny_model


_RUNNING: list[pytest.Item] = []  # the test being set up or run, for run_kbit's check
TRAINING_COMMANDS = ("train", "compare")
QUICK_S = 20  # a training command refused on bad input ends well within this; one that trains does not


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _RUNNING.append(item)
    try:
        return (yield)
    finally:
        _RUNNING.pop()


def copy_run(source: Path, target: Path, *, symlinks: bool = False, **fields: object) -> dict:
    """Copy the run folder ``source`` to ``target`` with ``fields`` of its ``kbit.json`` replaced; returns the
    record as ``source`` holds it."""
    import json

    shutil.copytree(source, target, symlinks=symlinks)
    record = json.loads((target / "kbit.json").read_text())
    (target / "kbit.json").write_text(json.dumps({**record, **fields}))
    return record


def run_kbit(*args: str, env: Mapping[str, str | None] | None = None, cwd: Path | None = None, timeout: int = 900):
    """Run the installed CLI in a subprocess, as a user would: ``kbit.testing``'s ``run_cli`` (its
    environment: this one without ``KBIT_*`` settings but ``KBIT_CACHE``, offline, plus ``env``).

    A test that trains this way (``train``, ``compare``; its fixtures included) must be marked slow, so
    that ``pytest -m "not slow"`` stays a quick loop: an unmarked one whose command succeeded or ran
    past ``QUICK_S`` fails here, naming the fix (one refused on bad input is quick and may stay unmarked)."""
    started = time.monotonic()
    result = run_cli(*args, env=env, cwd=cwd, timeout=timeout)
    trained = result.returncode == 0 or time.monotonic() - started > QUICK_S
    if args and args[0] in TRAINING_COMMANDS and trained and _RUNNING and _RUNNING[-1].get_closest_marker("slow") is None:
        pytest.fail(f"{_RUNNING[-1].nodeid} runs 'kbit {args[0]}' in a subprocess: mark it @pytest.mark.slow", pytrace=False)
    return result


@pytest.fixture(scope="session")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One short real qlora run of the embedded SmolLM2-135M (30 steps, 20 held-out items), shared by
    the slow integration tests (train + eval, export; only the export writes into it, its own gguf/):
    training it once keeps CI short. 30 steps: after 12 the model is unsure enough that q8_0 rounding
    flipped one of the 54 answer tokens of the export test's 20 items (98.1% < its 99% gate)."""
    out = tmp_path_factory.mktemp("smollm2") / "run"
    result = run_kbit("train", "--output", str(out), "--max-steps", "30", "--eval-limit", "20", "--logging-steps", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
