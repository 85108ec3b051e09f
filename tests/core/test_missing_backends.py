"""A built-in method whose backend extra is not installed: listed as missing with its install line,
and refused at use with that line (exit 2) before any work.

The CLI runs in a subprocess in which the backend packages are made uninstalled for Python: a
``None`` entry in ``sys.modules`` makes ``importlib.util.find_spec`` return None and ``import``
raise ModuleNotFoundError, exactly what an environment without them shows.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kbit.core.methods.registry import Registry

PTQ_LINE = "pip install 'kbit[ptq]'"
TORCHAO_LINE = "pip install 'kbit[torchao]'"

WITHOUT = """\
import sys
sys.modules.update(dict.fromkeys(sys.argv[1].split(",")))
from kbit.core.cli import main
try:
    main(sys.argv[2:])
finally:
    print(f"torch imported: {'torch' in sys.modules}", file=sys.stderr)
"""


def kbit_without(modules: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run ``kbit ARGS`` with the comma-separated top-level ``modules`` absent."""
    return subprocess.run([sys.executable, "-c", WITHOUT, modules, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_methods_lists_each_missing_backend_with_its_install_line():
    result = kbit_without("llmcompressor,compressed_tensors,torchao", "methods")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("gptq", "awq"):
        assert f"{name} missing: needs llmcompressor, compressed_tensors: {PTQ_LINE}" in lines, result.stdout
    assert f"torchao-int8 missing: needs torchao: {TORCHAO_LINE}" in lines, result.stdout
    assert not any(line.startswith(("qlora ", "lora ")) for line in lines)  # ready methods have no note

    listed = json.loads(kbit_without("llmcompressor,compressed_tensors", "methods", "--json").stdout)
    status = {m["name"]: (m["status"], m["error"]) for m in listed if m["builtin"]}
    assert status["gptq"] == ("missing", f"needs llmcompressor, compressed_tensors: {PTQ_LINE}")
    assert status["qlora"] == ("ready", "") and status["lora"] == ("ready", "")


@pytest.mark.parametrize("method, modules, line", [
    ("gptq", "llmcompressor,compressed_tensors", PTQ_LINE),
    ("awq", "compressed_tensors", PTQ_LINE),
    ("ao-int8", "torchao", TORCHAO_LINE),  # an alias reaches the same refusal
])
def test_using_a_missing_method_is_refused_with_the_install_line_before_any_work(tmp_path, method, modules, line):
    run = tmp_path / "run"
    # Model and dataset do not exist: refusing the method first is what makes this error the install line.
    result = kbit_without(modules, "train", "--method", method, "--model", str(tmp_path / "no-model"),
                          "--dataset", str(tmp_path / "no-data.jsonl"), "--output", str(run), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [text for text in result.stderr.splitlines() if text.startswith("kbit: error:")]  # torch may warn too
    assert error.startswith("kbit: error: method ") and error.endswith(line), result.stderr
    assert not run.exists() and not (tmp_path / "runs").exists()

    spec = kbit_without(modules, "spec", method)
    assert spec.returncode == 2
    assert spec.stderr.splitlines() == [spec.stderr.splitlines()[0], "torch imported: False"]  # before the heavy stack
    assert spec.stderr.splitlines()[0].endswith(line)


def test_each_builtin_install_line_names_the_extra_or_core_dependency_that_provides_the_module():
    metadata = importlib.metadata.metadata("kbit")
    requirements = [Requirement(r) for r in importlib.metadata.requires("kbit")]
    core = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    extras = {extra: {canonicalize_name(r.name) for r in requirements if r.marker and r.marker.evaluate({"extra": extra})}
              for extra in metadata.get_all("Provides-Extra")}
    checked = 0
    for record in Registry(environ={"KBIT_BUILTINS_ONLY": "1"}).records():
        if not record.builtin:
            continue
        for needed in record.info.requires:
            distribution = canonicalize_name(needed.module.replace("_", "-"))
            extra = re.fullmatch(r"pip install 'kbit\[([a-z]+)\]'", needed.install)
            if extra:
                assert distribution in extras[extra[1]], (record.name, needed)
                checked += 1
            else:
                assert distribution in core, (record.name, needed)
    assert checked == 5  # gptq and awq: llmcompressor, compressed_tensors; torchao-int8: torchao


def test_report_to_a_tracker_that_is_not_installed_is_refused_with_its_install_line(tmp_path):
    run = tmp_path / "run"
    result = kbit_without("wandb", "train", "--report-to", "wandb", "--model", str(tmp_path / "no-model"),
                          "--output", str(run), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [text for text in result.stderr.splitlines() if text.startswith("kbit: error:")]
    assert error == "kbit: error: --report-to wandb needs wandb: pip install 'kbit[wandb]'"
    assert not run.exists() and not (tmp_path / "runs").exists()


def test_each_tracker_install_line_names_the_extra_that_provides_it():
    from kbit.core.train.plan import TRACKERS

    requirements = [Requirement(r) for r in importlib.metadata.requires("kbit")]
    for name, tracker in TRACKERS.items():
        extra = re.fullmatch(r"pip install 'kbit\[([a-z]+)\]'", tracker.install)[1]
        assert tracker.module in {canonicalize_name(r.name) for r in requirements
                                  if r.marker and r.marker.evaluate({"extra": extra})}, name
