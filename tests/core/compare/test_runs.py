"""What a comparison finds in a method's run folder before it trains, reuses or resumes it."""

from __future__ import annotations

from kbit.core.compare.runs import mismatch
from kbit.core.train.config import build_config


def test_a_damaged_record_is_named_as_such_not_as_someone_elses_folder(tmp_path):
    run = tmp_path / "qlora"
    run.mkdir()
    (run / "kbit.json").write_text('{"kind": "run", "sta')
    problem = mismatch(run, build_config(None, {}), data_fingerprint="x", model_revision="y")
    assert problem.startswith("holds a run whose kbit.json cannot be read back") and "is corrupt" in problem


def test_a_folder_of_other_files_is_someone_elses(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    problem = mismatch(tmp_path, build_config(None, {}), data_fingerprint="x", model_revision="y")
    assert problem == "holds something other than a kbit run"
