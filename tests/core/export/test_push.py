"""``kbit push``: the plan (exactly the files that go) and every refusal before the network."""

from __future__ import annotations

import os
import shutil

import pytest

from kbit.core.errors import ConfigError
from kbit.core.push import plan_push
from kbit.testing.pytest_plugin import OFFLINE
from tests.conftest import run_kbit


@pytest.fixture
def fake_run(tmp_path):
    """A run directory with kbit's files around its artifacts (contents do not matter to the plan)."""
    import json

    run = tmp_path / "run"
    for relative in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/README.md",
                     "merged/config.json", "merged/model.safetensors", "merged/README.md", "gguf/run-q8_0.gguf",
                     "gguf/README.md", "checkpoints/checkpoint-2/optimizer.pt", "README.md", "loss.png",
                     "gguf/.run-q4_0.gguf.tmp-abc", ".kbit.lock"):
        (run / relative).parent.mkdir(parents=True, exist_ok=True)
        (run / relative).write_text("x")
    (run / "kbit.json").write_text(json.dumps({"schema_version": 1, "kind": "run", "name": "run", "status": "finished"}))
    return run


def test_several_folders_go_to_subfolders_under_the_run_card(fake_run):
    plan = plan_push(fake_run, "me/x", None)
    assert plan.folder == fake_run
    assert [remote for _, remote in plan.files] == [
        "README.md", "loss.png", "adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
        "merged/README.md", "merged/config.json", "merged/model.safetensors", "gguf/README.md", "gguf/run-q8_0.gguf"]


def test_one_folder_becomes_the_repository_root(fake_run):
    plan = plan_push(fake_run, "me/x", "gguf")
    assert plan.folder == fake_run / "gguf"
    assert [remote for _, remote in plan.files] == ["README.md", "run-q8_0.gguf"]


@pytest.mark.parametrize("repo_id, what, message", [
    ("x", None, "--repo-id 'x' is not a hub repository id"),
    ("me/x", "weights", "unknown --what 'weights'"),
    ("me/x", "adapter,quantized", "has no quantized/ to push"),
])
def test_bad_input_is_refused_before_the_network(fake_run, repo_id, what, message):
    with pytest.raises(ConfigError, match=message):
        plan_push(fake_run, repo_id, what)


def test_a_run_that_did_not_finish_is_not_published(fake_run):
    import json

    record = json.loads((fake_run / "kbit.json").read_text())
    record.update(status="failed", error="merge check failed: the merged model differs")
    (fake_run / "kbit.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="push uploads finished runs, and run .* is failed: merge check failed: the "
                                          "merged model differs; fix what stopped it and train it again"):
        plan_push(fake_run, "me/x", None)


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not a kbit run"):
        plan_push(tmp_path, "me/x", None)


def _no_token_env(tmp_path, **extra):
    """No Hugging Face settings (token, offline switches) but a fresh HF_HOME, and ``extra``."""
    removed = {k: None for k in (*os.environ, *OFFLINE) if k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_OFFLINE"))}
    return {**removed, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def test_dry_run_lists_the_files_without_a_token(fake_run, tmp_path):
    result = run_kbit("push", str(fake_run), "--repo-id", "me/x", "--dry-run", env=_no_token_env(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("would upload 10 files") and lines[0].endswith("to me/x:")
    assert "  gguf/run-q8_0.gguf  ←  " in result.stdout and "kbit.json" not in result.stdout and "checkpoint" not in result.stdout


def test_without_a_token_push_is_one_line_and_exit_2(fake_run, tmp_path):
    result = run_kbit("push", str(fake_run), "--repo-id", "me/x", env=_no_token_env(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no Hugging Face token: run 'hf auth login' or set HF_TOKEN" in result.stderr


def test_offline_push_is_one_line_and_exit_2(fake_run, tmp_path):
    result = run_kbit("push", str(fake_run), "--repo-id", "me/x", env=_no_token_env(tmp_path, HF_HUB_OFFLINE="1", HF_TOKEN="hf_x"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "HF_HUB_OFFLINE is set" in result.stderr


def test_a_network_failure_is_one_line_and_exit_2(fake_run, tmp_path):
    # A token but no reachable hub (this test machine is offline; the endpoint is a closed local port).
    env = _no_token_env(tmp_path, HF_TOKEN="hf_x", HF_ENDPOINT="http://127.0.0.1:9")
    result = run_kbit("push", str(fake_run), "--repo-id", "me/x", env=env, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("kbit: error: cannot push to me/x:")


@pytest.mark.slow
def test_only_what_kbit_wrote_goes(tiny_run, tmp_path):
    from tests.conftest import copy_run

    run = tmp_path / "run"
    copy_run(tiny_run, run, exports=[])  # other tests export into the shared run: this copy has exported nothing
    shutil.rmtree(run / "gguf", ignore_errors=True)
    (run / "merged" / "credentials.txt").write_text("hf_secret")
    (run / "adapter" / "data").mkdir()
    (run / "adapter" / "data" / "train.jsonl").write_text("{}")
    plan = plan_push(run, "me/x", None)
    sent = {remote for _, remote in plan.files}
    assert plan.left_home == ("adapter/data/train.jsonl", "merged/credentials.txt")
    assert {"merged/model.safetensors", "merged/config.json", "merged/tokenizer.json", "merged/README.md",
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= sent
    everything = {f"{p.parent.name}/{p.name}" for a in ("adapter", "merged") for p in (run / a).iterdir()}
    assert sent | set(plan.left_home) >= everything - {"adapter/data"}
    # a folder the record lists nothing for (this run exported and quantized nothing) holds nothing kbit wrote
    for relative in ("gguf/private.gguf", "quantized/model.safetensors", "quantized/config.json"):
        (run / relative).parent.mkdir(exist_ok=True)
        (run / relative).write_text("x")
    with pytest.raises(ConfigError, match="has no gguf/ to push \\(or none of its files kbit wrote\\); present: adapter, merged"):
        plan_push(run, "me/x", "gguf,quantized")
    plan = plan_push(run, "me/x", None)
    assert {remote for _, remote in plan.files} == sent
    assert plan.left_home == ("adapter/data/train.jsonl", "merged/credentials.txt", "gguf/private.gguf",
                              "quantized/config.json", "quantized/model.safetensors")


def test_a_run_whose_record_lists_no_files_sends_what_transformers_saves(fake_run, tmp_path):
    (fake_run / "merged" / "credentials.txt").write_text("hf_secret")
    (fake_run / "merged" / "tokenizer_config.json").write_text("{}")
    plan = plan_push(fake_run, "me/x", "merged")
    assert [remote for _, remote in plan.files] == ["README.md", "config.json", "model.safetensors", "tokenizer_config.json"]
    assert plan.left_home == ("merged/credentials.txt",)
    result = run_kbit("push", str(fake_run), "--repo-id", "me/x", "--what", "merged", "--dry-run", env=_no_token_env(tmp_path))
    assert "left home, as kbit did not write them: merged/credentials.txt" in result.stdout, result.stdout
