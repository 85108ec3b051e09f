"""The output rule by containment (kbit/core/runs/outputs.py), on hand-made folders: no model needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kbit.core.errors import ConfigError
from kbit.core.runs.folder import RunLock, take_over
from kbit.core.runs.outputs import claim, held_output, kbit_kind


def _output(folder: Path, kind: str) -> Path:
    """A folder that kbit's ``kind`` output marks as its own (kbit.json or report.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "report.json" if kind in ("eval", "compare") else "kbit.json"
    (folder / name).write_text(json.dumps({"kind": kind}))
    (folder / "data.bin").write_bytes(b"precious")
    return folder


def _claim(target: Path, kind: str, **kwargs) -> Path:
    return claim(target, is_own=lambda p: kbit_kind(p) == kind, kind=kind, **kwargs)


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_own_report_holding_a_run_is_never_replaced(tmp_path, overwrite):
    report = _output(tmp_path / "rep1", "eval")
    _output(report / "nested", "run")
    with pytest.raises(ConfigError, match=r"holds the kbit run .*nested; a folder holding another kbit output is never replaced"):
        _claim(report, "eval", overwrite=overwrite)


def test_overwrite_never_replaces_a_plain_folder_holding_a_run_deep_inside(tmp_path):
    folder = tmp_path / "dir"
    _output(folder / "a" / "b" / "run", "run")
    with pytest.raises(ConfigError, match="holds the kbit run"):
        _claim(folder, "eval", overwrite=True, flag="--out")
    assert (folder / "a" / "b" / "run" / "data.bin").read_bytes() == b"precious"


def test_an_own_output_is_replaced_only_while_it_holds_nothing_but_what_kbit_wrote(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    for name in ("report.json", "report.md", "report.png", "predictions.jsonl"):
        (report / name).write_text(json.dumps({"kind": "eval"}) if name == "report.json" else "")
    assert _claim(report, "eval") == report.resolve()  # an earlier report: kbit's to replace
    (report / "analysis.ipynb").write_text("the user's")
    with pytest.raises(ConfigError, match="is an earlier kbit report but also holds analysis.ipynb, which kbit did not "
                                          "write: move those out first, or choose another path; kbit replaces only"):
        _claim(report, "eval", overwrite=True)
    project = tmp_path / "project"  # a marker file alone makes no folder kbit's
    (project / ".git").mkdir(parents=True)
    (project / "report.json").write_text(json.dumps({"kind": "eval"}))
    with pytest.raises(ConfigError, match="also holds .git, which kbit did not write"):
        _claim(project, "eval")
    assert (project / ".git").is_dir()


def test_a_quantized_folder_is_replaced_only_as_its_record_lists_it(tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    record = {"kind": "quantized", "schema_version": 2, "quantize": {"files": ["kbit.json", "model.safetensors"]}}
    (folder / "kbit.json").write_text(json.dumps(record))
    assert _claim(folder, "quantized") == folder.resolve()
    (folder / "Documents").mkdir()
    with pytest.raises(ConfigError, match="also holds Documents, which kbit did not write"):
        _claim(folder, "quantized", overwrite=True)
    (folder / "Documents").rmdir()
    (folder / "kbit.json").write_text(json.dumps({"kind": "quantized", "schema_version": 2}))  # an older kbit's: no list
    with pytest.raises(ConfigError, match=r"its record lists no files \(an older kbit wrote it\): remove it yourself"):
        _claim(folder, "quantized")


@pytest.mark.parametrize("kind", ["run", "eval", "quantized", "compare"])
def test_overwrite_never_deletes_a_folder_of_someone_elses_files(tmp_path, kind):
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.txt").write_text("years of work")
    with pytest.raises(ConfigError, match="already holds other data, not written by this command; kbit never deletes"):
        _claim(home, kind, overwrite=True)
    assert (home / "Documents" / "thesis.txt").read_text() == "years of work"
    (tmp_path / "notes.gguf").write_text("mine")  # a plain file named as the output: replaced with --overwrite only
    with pytest.raises(ConfigError, match="is a file, not written by this command; .* pass --overwrite"):
        _claim(tmp_path / "notes.gguf", kind)
    assert _claim(tmp_path / "notes.gguf", kind, overwrite=True) == (tmp_path / "notes.gguf").resolve()


@pytest.mark.parametrize("owner, label", [("eval", "report"), ("quantized", "quantized model"),
                                          ("compare", "comparison"), ("run", "run")])
def test_a_new_output_never_goes_inside_another_commands_output(tmp_path, owner, label):
    folder = _output(tmp_path / "out", owner)
    for kind in ("run", "eval", "quantized", "compare"):
        with pytest.raises(ConfigError, match=f"lies inside the kbit {label} .*which another kbit command wrote"):
            _claim(folder / "nested", kind)
    assert not (folder / "nested").exists()


def test_a_comparison_nests_its_own_runs_and_reports_only(tmp_path):
    compare = _output(tmp_path / "cmp", "compare")
    assert _claim(compare / "runs" / "lora", "run") == (compare / "runs" / "lora").resolve()
    assert _claim(compare / "evals" / "lora", "eval") == (compare / "evals" / "lora").resolve()
    for target, kind in ((compare / "other", "run"), (compare / "runs" / "lora", "eval"), (compare / "runs" / "a" / "b", "run")):
        with pytest.raises(ConfigError, match="lies inside the kbit comparison"):
            _claim(target, kind)
    _output(compare / "runs" / "lora", "run")
    assert _claim(compare, "compare") == compare.resolve()  # continued: its own runs are kept


def test_a_link_inside_a_kbit_output_is_never_followed(tmp_path):
    compare = _output(tmp_path / "cmp", "compare")
    outside = _output(tmp_path / "outside" / "lora", "run").parent
    (compare / "runs").symlink_to(outside, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is reached through the symlink .*runs inside the kbit comparison") as info:
            _claim(compare / "runs" / "lora", "run", overwrite=overwrite)
        assert "--overwrite" not in str(info.value)
    assert (outside / "lora" / "data.bin").read_bytes() == b"precious"


@pytest.mark.parametrize("relation", ["is", "holds"])
def test_the_commands_own_inputs_are_never_replaced(tmp_path, relation):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("{}\n")
    read = data if relation == "is" else data / "train.jsonl"
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=f"--output data {relation} .*, which this command reads; choose another path"):
            _claim(Path("data"), "run", overwrite=overwrite, inputs=("arith", str(read), None))
    assert (data / "train.jsonl").read_text() == "{}\n"


def test_held_output_does_not_follow_links(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    _output(tmp_path / "run", "run")
    (folder / "link").symlink_to(tmp_path / "run", target_is_directory=True)
    assert held_output(folder) is None
    (folder / "notes.json").write_text("{}")
    (folder / "report.json").write_text(json.dumps({"tool": "not kbit"}))  # another tool's report is not kbit's
    assert held_output(tmp_path / "dir") is None and held_output(tmp_path) == tmp_path / "run"


def test_take_over_never_moves_what_a_link_reaches(tmp_path):
    real = tmp_path / "real"
    (real / "run").mkdir(parents=True)
    (real / "run" / "data.bin").write_bytes(b"precious")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    target = tmp_path / "link" / "run"
    with pytest.raises(ConfigError, match="is reached through a symlink"):
        take_over(target, RunLock(target), replace=True)
    assert (real / "run" / "data.bin").read_bytes() == b"precious"
    assert not [p for p in real.iterdir() if p.name.startswith(".")] and os.listdir(real / "run") == ["data.bin"]
