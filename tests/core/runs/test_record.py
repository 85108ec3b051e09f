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
    assert record.merge_policy.action == "merge" and record.merge.top1_agreement == 1.0
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


@pytest.mark.parametrize("field, value, message", [
    ("train", {"steps": "many"}, "field 'train.steps' must be a whole number or null, got str"),
    ("train", {"steps": 4.5}, "field 'train.steps' must be a whole number or null, got float"),
    ("merge", {"top1_agreement": "all"}, "field 'merge.top1_agreement' must be a number"),
    ("metrics", {"after": {"items": "six"}}, "field 'metrics.after.items' must be a whole number, got str"),
    ("exports", [{"file": 3}], r"field 'exports\[0\].file' must be a string"),
    ("base_model", "SmolLM2", "field 'base_model' must be an object"),
])
def test_a_damaged_part_is_refused_by_its_path(field, value, message):
    data = json.loads((FIXTURE / "finished" / "kbit.json").read_text())
    with pytest.raises(ConfigError, match=message):
        RunRecord.from_dict({**data, field: value})


def test_each_stage_reads_back_typed_and_keeps_keys_it_does_not_know(tmp_path):
    data = json.loads((FIXTURE / "finished" / "kbit.json").read_text())
    record = RunRecord.from_dict({**data, "train": {"steps": 4, "mfu": 0.5, "future": [1]},
                                  "exports": [{"file": "gguf/x.gguf", "type": "q8_0", "exact_match": 0.5, "kl": 0.01}]})
    assert record.train.steps == 4 and record.train.mfu == 0.5 and record.train.tokens_per_s is None
    assert record.exports[0].type == "q8_0" and record.exports[0].extra == {"kl": 0.01}
    write_record(tmp_path, record)
    again = json.loads((tmp_path / "kbit.json").read_text())
    assert again["train"]["future"] == [1] and again["train"]["tokens_per_s"] is None  # every field written
    assert again["exports"][0]["kl"] == 0.01 and read_record(tmp_path) == record


def test_a_schema_2_record_keeps_its_scores_without_the_copies_of_them(tmp_path):
    data = json.loads((FIXTURE / "finished" / "kbit.json").read_text())
    scores = {"items": 30, "exact_match": 0.9, "exact_match_hits": 27}
    old = {**data, "schema_version": 2, "metrics": {"before": {**scores, "exact_match": 0.1, "exact_match_hits": 3},
                                                    "after": scores, "exact_match_before": 0.1, "exact_match_after": 0.9}}
    record = RunRecord.from_dict(old)
    assert record.metrics.after.exact_match_hits == 27 and record.metrics.before.exact_match == 0.1
    write_record(tmp_path, record)
    metrics = json.loads((tmp_path / "kbit.json").read_text())["metrics"]
    assert "exact_match_after" not in metrics and metrics["after"]["exact_match"] == 0.9
    assert SCHEMA_VERSION == json.loads((tmp_path / "kbit.json").read_text())["schema_version"] == 3


@pytest.mark.parametrize("fields, expected", [
    ({"status": "failed", "error": "merge check failed: the merged model differs\nmore"},
     "has no merged model to quantize: it is failed: merge check failed: the merged model differs; fix what stopped it"),
    ({"status": "interrupted", "error": "KeyboardInterrupt: "},
     "has no merged model to quantize: it is interrupted; resume it with kbit train --resume {folder}"),
    ({"status": "finished", "merge_policy": {"action": "keep_adapter", "reason": "r"}},
     "its method's merge policy keeps only the adapter; train with a method that merges"),
    ({"status": "finished", "artifacts": {"merged": "merged"}}, "recorded a merged model, but"),
    ({"status": "finished", "merge_policy": {"action": "keep_adapter", "reason": "merge_after_train=false"}},
     "it trained with -o merge_after_train=false; train it again without that option"),
])
def test_a_run_without_merged_model_says_why(tmp_path, fields, expected):
    from kbit.core.contract.method_info import MergePolicy

    if "merge_policy" in fields:
        fields = {**fields, "merge_policy": MergePolicy(**fields["merge_policy"])}
    assert expected.format(folder=tmp_path) in RunRecord(**fields).why_no_merged(tmp_path, "quantize")
