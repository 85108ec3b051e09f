"""Runs written by kbit 0.1 (kbit.json schema 1, spec schema 1) still evaluate and resume.

tests/fixtures/run-0.1 holds such runs (see its README). Their kbit.json files name the folders of
the machine that wrote them; the test points them at this checkout's copy first, as a user who moved
a run to another machine would.
"""

import json
import shutil
from pathlib import Path

import pytest

from kbit.core.runs.stamps import SCHEMA_VERSION
from tests.conftest import run_kbit

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run-0.1"
WRITTEN_AT = "/tmp/fx"


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "fx"
    shutil.copytree(FIXTURE, root)
    for record in root.glob("*/kbit.json"):
        record.write_text(record.read_text().replace(WRITTEN_AT, str(root).replace("\\", "/")))
    for adapter in root.glob("*/adapter/adapter_config.json"):
        adapter.write_text(adapter.read_text().replace(WRITTEN_AT, str(root)))
    return root


def test_a_finished_run_of_kbit_0_1_evaluates(runs):
    assert json.loads((runs / "finished" / "kbit.json").read_text())["schema_version"] == 1
    result = run_kbit("eval", str(runs / "finished"), "--limit", "2", "--max-new-tokens", "4",
                      "--out", str(runs / "report"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["variant"]: row for row in json.loads(result.stdout)["rows"]}
    assert set(rows) == {"base", "adapter", "merged"}
    assert rows["adapter"]["loss"] == pytest.approx(rows["merged"]["loss"], rel=1e-3)


@pytest.mark.slow
def test_an_interrupted_run_of_kbit_0_1_resumes_and_is_rewritten_in_the_current_schema(runs):
    run = runs / "interrupted"
    assert json.loads((run / "kbit.json").read_text())["status"] == "running"
    result = run_kbit("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "kbit.json").read_text())
    assert record["status"] == "finished" and record["train"]["resumed_from"] == "checkpoint-2"
    assert record["train"]["steps"] == 4 and [h["step"] for h in record["loss_history"]] == [1, 2, 3, 4]
    assert record["schema_version"] == SCHEMA_VERSION and record["spec"]["adapter"]["r"] == 4
    assert record["merge"]["top1_agreement"] >= 0.99 and (run / "merged" / "config.json").is_file()
    # its held_out_fraction is read as --held-out 0.1: the same split, so the same data fingerprint
    assert record["config"]["held_out"] == 0.1 and "held_out_fraction" not in record["config"]
    from kbit.core.data import load_task_data

    assert load_task_data(record["config"]["dataset"], held_out=0.1, seed=1).fingerprint() == record["dataset"]["fingerprint"]
