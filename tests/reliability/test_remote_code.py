"""Model code shipped in a model directory (``auto_map``) runs only with ``--trust-remote-code``."""

import json
import os

import pytest

from kbit.core.runs.record import read_metadata
from kbit.testing import make_tiny_model
from tests.conftest import run_kbit

# Importing either module leaves a marker file: the proof that the repository's code ran.
CONFIGURATION = '''
import os
from pathlib import Path
from transformers import LlamaConfig

Path(os.environ["KBIT_TEST_MARKER"]).write_text("configuration code ran")


class CustomConfig(LlamaConfig):
    model_type = "kbit_custom_llama"
'''
MODELING = '''
from transformers import LlamaForCausalLM
from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("custom") / "model")
    (path / "configuration_custom.py").write_text(CONFIGURATION)
    (path / "modeling_custom.py").write_text(MODELING)
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="kbit_custom_llama", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (path / "config.json").write_text(json.dumps(config))
    return path


TRAIN = ("--max-steps", "1", "--batch-size", "2", "-o", "r=4", "--max-examples", "20", "--eval-limit", "0")


def _env(tmp_path):
    """The marker file's path, and an environment whose remote-code module cache is private to the test."""
    marker = tmp_path / "ran"
    return marker, {**os.environ, "KBIT_TEST_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}


@pytest.mark.slow
def test_repository_code_is_refused_without_the_flag(custom_model, tmp_path):
    (marker, env), out = _env(tmp_path), tmp_path / "run"
    result = run_kbit("train", "--model", str(custom_model), "--output", str(out), *TRAIN, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kbit: error:")]
    assert len(lines) == 1 and "--trust-remote-code" in lines[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.slow
def test_repository_code_runs_with_the_flag_and_no_file_grants_it(custom_model, tmp_path):
    (marker, env), out = _env(tmp_path), tmp_path / "run"
    result = run_kbit("train", "--model", str(custom_model), "--output", str(out), "--trust-remote-code", *TRAIN,
                      "-o", "merge_after_train=false", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.exists()
    record = read_metadata(out)
    assert record["status"] == "finished" and record["trust_remote_code"] is True

    marker.unlink()
    again = run_kbit("train", "--config", str(out), "--output", str(tmp_path / "again"), env=env)  # the run's record
    assert again.returncode == 2 and "ships its own model code" in again.stderr and "--trust-remote-code" in again.stderr
    evaluated = run_kbit("eval", str(custom_model), "--limit", "2", "--out", str(tmp_path / "report"), env=env)
    assert evaluated.returncode == 2 and "ships its own model code" in evaluated.stderr  # not a built-in class in its stead
    assert not marker.exists()
