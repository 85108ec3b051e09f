"""Settings from defaults, YAML, flags and a run's kbit.json: one typed validation, and what a resume may change."""

import json
from pathlib import Path

import pytest

from kbit.core.errors import ConfigError
from kbit.core.runs.record import read_record
from kbit.core.train.config import (
    RESUMABLE,
    TrainConfig,
    build_config,
    recorded_config,
    resume_config,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "run-0.1"


def _run(tmp_path: Path, **settings) -> Path:
    """A run folder whose kbit.json records ``settings`` (and nothing else a resume reads)."""
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(**{"max_steps": 60, "options": {"r": 4}, **settings}).to_dict()
    (run / "kbit.json").write_text(json.dumps({"schema_version": 2, "kind": "run", "status": "finished", "config": config}))
    return run


def test_a_resume_takes_the_recorded_settings_and_flags_that_repeat_them(tmp_path):
    run = _run(tmp_path)
    config = resume_config(run, {"max_steps": 60, "options": {"r": "4"}, "method": "qlora", "output": str(run)})
    assert config.max_steps == 60 and str(config.options["r"]) == "4" and config.output == str(run)


def test_a_resume_takes_the_flags_that_only_change_how_the_run_is_logged_checked_and_scored(tmp_path):
    run = _run(tmp_path)
    flags = {"logging_steps": 5, "save_steps": 7, "eval_steps": 0, "report_to": "none", "eval_limit": 3,
             "max_new_tokens": 9, "merge_min_agreement": 0.5, "merge_tolerance": 0.01, "trust_remote_code": True}
    assert set(flags) == set(RESUMABLE)
    config = resume_config(run, flags)
    assert {k: getattr(config, k) for k in flags} == flags


def test_a_resume_takes_a_path_given_another_way_to_the_same_model_and_data(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "data.jsonl").write_text("{}")
    run = _run(tmp_path, model=str(tmp_path / "model"), dataset=str(tmp_path / "data.jsonl"))
    monkeypatch.chdir(tmp_path)
    config = resume_config(run, {"model": "model", "dataset": "./data.jsonl"})
    assert config.model == str(tmp_path / "model") and config.dataset == str(tmp_path / "data.jsonl")  # as recorded


@pytest.mark.parametrize("flags, change", [
    ({"max_steps": 80}, "--max-steps 80 (the run has 60)"),
    ({"method": "lora"}, "--method lora (the run has qlora)"),
    ({"dataset": "squad"}, "--dataset squad (the run has arith)"),
    ({"model": "other"}, "--model other (the run has default)"),
    ({"options": {"r": "8"}}, "-o r=8 (the run has r=4)"),
    ({"options": {"lora_dropout": "0.1"}}, "-o lora_dropout=0.1 (the run has the default)"),
])
def test_a_resume_refuses_to_change_what_the_run_trains_naming_the_change(tmp_path, flags, change):
    run = _run(tmp_path)
    with pytest.raises(ConfigError, match="with other training settings") as refused:
        resume_config(run, flags)
    assert change in str(refused.value)
    assert read_record(run).config.max_steps == 60


def test_a_kbit_0_1_config_is_read_into_the_current_typed_form():
    saved = json.loads((FIXTURE / "finished" / "kbit.json").read_text())["config"]
    config = recorded_config(saved)
    assert isinstance(config, TrainConfig) and config.held_out == 0.1 and "held_out_fraction" not in config.to_dict()
    assert config == TrainConfig(**config.to_dict()) and config.padding_free == "auto"


@pytest.mark.parametrize("values, message", [
    ({"model": 12345}, "invalid value for 'model': expected text, got int"),
    ({"options": [["r", 4]]}, "invalid value for 'options'"),
    ({"max_steps": 0, "epochs": 0}, "invalid settings: max_steps 0 means 'train for epochs'"),
    ({"grad_accum": 2**31}, "invalid value for 'grad_accum': expected an integer between 1 and 2147483647"),
])
def test_every_setting_is_typed_wherever_it_comes_from(values, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        build_config(None, values)
    with pytest.raises(ConfigError):
        recorded_config(values)


def test_a_new_run_records_local_paths_absolute_and_builtin_names_as_names(tmp_path, monkeypatch):
    from kbit.core.train.config import located

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text("{}\n")
    (tmp_path / "arith").mkdir()  # a folder named like the built-in set does not shadow it
    (tmp_path / "model").mkdir()
    config = located(build_config(None, {"dataset": "mine.jsonl", "model": "model"}))
    assert config.dataset == str(tmp_path.resolve() / "mine.jsonl") and config.model == str(tmp_path.resolve() / "model")
    config = located(build_config(None, {"dataset": "arith", "model": "default"}))
    assert (config.dataset, config.model) == ("arith", "default")
    assert located(build_config(None, {"dataset": "org/hub-set"})).dataset == "org/hub-set"


def test_an_invalid_value_names_the_config_file_it_came_from_unless_a_flag_replaced_it(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("max_steps: five\nlr: 0.001\n")
    with pytest.raises(ConfigError, match=f"config file {file}: invalid value for 'max_steps'"):
        build_config(file, {})
    assert build_config(file, {"max_steps": 3}).max_steps == 3
    with pytest.raises(ConfigError, match="^invalid value for 'batch_size'"):
        build_config(file, {"max_steps": 3, "batch_size": 0})


def test_a_runs_folder_as_config_repeats_its_settings_into_a_new_output(tmp_path):
    recorded = TrainConfig(model="m", dataset="d.jsonl", max_steps=7, lr=1e-3, output=str(tmp_path / "old"),
                           options={"r": "8"})
    run = tmp_path / "old"
    run.mkdir()
    (run / "kbit.json").write_text(json.dumps({"schema_version": 3, "kind": "run", "config": recorded.to_dict(),
                                               "artifacts": {}}))
    again = build_config(run, {"output": str(tmp_path / "new"), "lr": 2e-3})
    assert (again.model, again.dataset, again.max_steps, again.options) == ("m", "d.jsonl", 7, {"r": "8"})
    assert again.output == str(tmp_path / "new") and again.lr == 2e-3  # flags still win


def test_a_repeated_run_keeps_the_compute_dtype_its_auto_chose_unless_asked_to_choose_again(tmp_path):
    recorded = TrainConfig(model="m", dataset="d.jsonl", output=str(tmp_path / "old"), options={"r": "8"})
    run = tmp_path / "old"
    run.mkdir()
    chosen = {"compute_dtype": {"value": "bfloat16", "requested": "auto", "reason": "auto: the probe"}}
    (run / "kbit.json").write_text(json.dumps({"schema_version": 3, "kind": "run", "config": recorded.to_dict(),
                                               "decisions": chosen}))
    # the machine's timing probe chose it: another machine's auto could choose float32 and train other numbers
    assert build_config(run, {}).options == {"r": "8", "compute_dtype": "bfloat16"}
    assert build_config(run, {"options": {"compute_dtype": "auto"}}).options == {"r": "8", "compute_dtype": "auto"}


def test_a_run_repeated_with_another_method_leaves_its_methods_options_behind(tmp_path, caplog):
    import logging

    recorded = TrainConfig(model="m", method="gptq", options={"bits": "8"}, output=str(tmp_path / "old"))
    run = tmp_path / "old"
    run.mkdir()
    (run / "kbit.json").write_text(json.dumps({"schema_version": 3, "kind": "run", "config": recorded.to_dict()}))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        again = build_config(run, {"method": "lora", "output": str(tmp_path / "new")})
    assert again.method == "lora" and not again.options
    assert "the options of" in caplog.text and "(bits) are its method gptq's: --method lora starts from its own defaults" \
        in caplog.text


@pytest.mark.parametrize("key, flag", [("dataset", "--dataset"), ("held_out", "--held-out")])
def test_a_run_repeated_after_its_data_file_moved_names_the_flag_for_another_file(tmp_path, key, flag):
    data = tmp_path / "data.jsonl"
    data.write_text("")
    gone = str(tmp_path / "gone.jsonl")
    recorded = TrainConfig(**{"dataset": str(data), key: gone}, output=str(tmp_path / "old"))
    run = tmp_path / "old"
    run.mkdir()
    (run / "kbit.json").write_text(json.dumps({"schema_version": 3, "kind": "run", "config": recorded.to_dict()}))
    with pytest.raises(ConfigError, match=f"run {run} read its {flag[2:]} from {gone}, which is no longer there .* pass "
                                          f"{flag} FILE to repeat its settings on another file"):
        build_config(run, {})
    assert getattr(build_config(run, {key: str(data)}), key) == str(data)  # the flag replaces the recorded file


def test_columns_in_a_yaml_file_may_be_a_mapping(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("dataset: faq.csv\ncolumns:\n  prompt: q\n  completion: a\n")
    assert build_config(file, {}).columns == "prompt=q,completion=a"  # as --columns writes it, and kbit.json records it
