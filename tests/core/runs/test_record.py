"""kbit.json through one typed record: every schema kbit wrote reads, damage is refused by field."""

import json
from pathlib import Path

import pytest

from kbit.core.errors import ConfigError
from kbit.core.runs.record import SCHEMA_VERSION, RunRecord, read_record, write_record

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run-0.1"


def test_a_kbit_0_1_record_reads_into_typed_fields_and_writes_back_in_the_current_schema(tmp_path):
    record = read_record(FIXTURE / "finished")
    assert record.status == "finished" and record.kind == "run"
    assert record.spec.adapter.r == 4 and record.spec.training.compute_dtype == "float32"
    assert record.merge_policy.action == "merge" and record.merge["top1_agreement"] == 1.0
    write_record(tmp_path, record)
    again = json.loads((tmp_path / "kbit.json").read_text())
    assert again["schema_version"] == SCHEMA_VERSION and again["spec"]["schema_version"] == 2
    assert read_record(tmp_path) == record


@pytest.mark.parametrize("field, value, message", [
    ("status", "done", "status"), ("artifacts", ["adapter"], "field 'artifacts' must be an object"),
    ("spec", "qlora", "field 'spec' must be an object"), ("trust_remote_code", "yes", "true/false"),
    ("wall_time_s", "fast", "field 'wall_time_s' must be a number"), ("merge_policy", {"action": "melt"}, "action"),
])
def test_a_damaged_field_is_refused_by_name(field, value, message):
    data = json.loads((FIXTURE / "finished" / "kbit.json").read_text())
    with pytest.raises(ConfigError, match=message):
        RunRecord.from_dict({**data, field: value})


def test_fields_a_newer_kbit_added_are_kept():
    data = json.loads((FIXTURE / "finished" / "kbit.json").read_text())
    record = RunRecord.from_dict({**data, "future_field": {"a": 1}})
    assert record.to_dict()["future_field"] == {"a": 1}
