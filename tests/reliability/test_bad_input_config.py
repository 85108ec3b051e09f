"""The bad-input table for config files, --resume and run folders: untrusted input, each refused in one line.

Every setting is type-checked whether it comes from a YAML file, a flag or a run's kbit.json; a resume
that would change what the run trains is refused, naming the change; step settings that train no step
or ask for more micro-batches than the data holds are refused. Same assertions as test_bad_input.py:
exit 2, one ``kbit: error:`` line with the message, no traceback, nothing written, the finished run unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.refusals import assert_refused
from tests.reliability.test_bad_input import _with_record

TRAIN = ("train", "--model", "{tiny}", "--max-steps", "1", "--eval-limit", "0")
# Settings come from the file only (a flag would win over it); the file starts with the tiny model,
# less the keys a case sets itself (a key given twice is refused).
YAML_HEAD = "model: {tiny}\neval_limit: 0\n"

# YAML values of the wrong type, one per setting: (file text, message)
YAML_CASES = [
    ("output: {a: 1}\n", "invalid value for 'output': expected text, got dict"),
    ("model: 12345\n", "invalid value for 'model': expected text, got int 12345"),
    ("dataset: [a, b]\n", "'dataset' is a list; kbit reads one dataset: join the files into one"),
    ("columns: 5\n", "invalid value for 'columns': expected text, got int 5"),
    ("method: [lora]\n", "invalid value for 'method': expected text, got list"),
    ("name: 2024-01-01\n", "invalid value for 'name': expected text, got date"),
    ("name: 7\n", "invalid value for 'name': expected text, got int"),
    ("model: ''\n", "invalid value for 'model': must not be empty or blank"),
    ("model: null\n", "invalid value for 'model': expected text, got NoneType"),
    ("options: {1: 2}\n", "invalid value for 'options': option names are text, got int 1"),
    ("options: {r: [1, 2]}\n", "option 'r' for method qlora: expected an integer"),
    ("max_steps: [1]\n", "invalid value for 'max_steps'"),
    ("max_steps: 3000000000\n", "invalid value for 'max_steps': expected an integer between 0 and 2147483647"),
    ("epochs: {a: 1}\n", "invalid value for 'epochs': expected a number"),
    ("batch_size: [8]\n", "invalid value for 'batch_size'"),
    ("grad_accum: many\n", "invalid value for 'grad_accum'"),
    ("lr: [0.1]\n", "invalid value for 'lr': expected a number"),
    ("scheduler: [linear]\n", "invalid value for 'scheduler': expected one of"),
    ("warmup_ratio: {}\n", "invalid value for 'warmup_ratio'"),
    ("max_length: 1.5\n", "invalid value for 'max_length'"),
    ("seed: [1]\n", "invalid value for 'seed'"),
    ("packing: [true]\n", "invalid value for 'packing': expected true or false"),
    ("padding_free: [auto]\n", "invalid value for 'padding_free'"),
    ("logging_steps: {}\n", "invalid value for 'logging_steps'"),
    ("save_steps: []\n", "invalid value for 'save_steps'"),
    ("eval_steps: [1]\n", "invalid value for 'eval_steps'"),
    ("report_to: [none]\n", "invalid value for 'report_to'"),
    ("held_out: [1]\n", "invalid value for 'held_out'"),
    ("max_examples: {a: 1}\n", "invalid value for 'max_examples'"),
    ("eval_limit: [1]\n", "invalid value for 'eval_limit'"),
    ("max_new_tokens: true\n", "invalid value for 'max_new_tokens'"),
    ("merge_min_agreement: [1]\n", "invalid value for 'merge_min_agreement'"),
    # the permission to run a model's code comes from the command line only
    ("trust_remote_code: true\n", "sets trust_remote_code: the permission to run a model's own code is taken from "
                                   "--trust-remote-code on the command line only"),
    ("trust_remote_code: [true]\n", "sets trust_remote_code: the permission"),
    ("overwrite: true\n", "sets overwrite: the permission to replace an earlier run is taken from --overwrite on the "
                           "command line only"),
    # the YAML document itself
    ("max_steps: " + "9" * 5001 + "\n", "invalid YAML (Exceeds the limit (4300 digits)"),
    ("max_steps: " + "[" * 100_000 + "\n", "invalid YAML"),
    ("1: x\nfoo: y\n", "unknown keys '1', 'foo'"),
    ("r: 16\nroles_to_train: [assistant]\n", "unknown keys 'r' (kbit's options: {r: …}), 'roles_to_train' (kbit's turns "
                                              "(roles_to_train: [assistant] is turns: all))"),
    ("base_model: m\nlora_r: 8\nmax_step: 3\n", "unknown keys 'base_model' (kbit's model), 'lora_r' (kbit's options: {r: …}), "
     "'max_step' (did you mean max_steps?)"),
    ("dataset: [a.jsonl, b.jsonl]\n", "'dataset' is a list; kbit reads one dataset: join the files into one"),
    ("max_steps: two\n", "invalid value for 'max_steps': expected an integer between 0 and 2147483647, not 'two'"),
    ("max_steps: 2\nlr: 0.001\nmax_steps: 3\n", "line 5: invalid YAML (key 'max_steps' is given twice)"),
    ("options:\n  r: 4\n  r: 8\n", "line 5: invalid YAML (key 'r' is given twice)"),
    ("max_steps: 0\nepochs: 0\n", "the run would train no step"),
    # aliases that expand into a billion values: refused before any value is printed or checked
    ("options:\n  x0: &a0 [x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"  x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)) + "scheduler: *a8\n",
     "holds more than 10000 values (YAML aliases expanding into each other?)"),
]


def _edit_config(**changes):
    return lambda record: record["config"].update(changes)


# kbit.json fields damaged or edited, read back by eval and --resume: name -> edit of the finished run's record
RECORDS = {
    "seed_text": _edit_config(seed="x"),
    "max_examples_text": _edit_config(max_examples="lots"),
    "columns_int": _edit_config(columns=7),
    "model_int": _edit_config(model=12345),
    "dataset_list": _edit_config(dataset=["a"]),
    "options_int": _edit_config(options=5),
    "options_list": _edit_config(options=[["r", 4]]),
    "held_out_text": _edit_config(held_out="lots"),
    "packing_text": _edit_config(packing="maybe"),
    "max_steps_negative": _edit_config(max_steps=-1),
    "batch_list": _edit_config(batch_size=[]),
    "name_climbs": _edit_config(name="../../x"),
    "steps_none": _edit_config(max_steps=0, epochs=0),
    "exports_ints": lambda record: record.update(exports=[5]),
    "history_text": lambda record: record.update(loss_history=["x"]),
}

# kbit.json files that are not JSON a reader can take: name -> the file's text
RAW_RECORDS = {
    "nested_deep": '{"schema_version": 2, "kind": "run", "config": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "number_huge": '{"schema_version": 2, "kind": "run", "config": {"seed": ' + "9" * 5001 + "}}",
}

RUN_CASES = [
    (("train", "--resume", "{nested_deep}"), "kbit.json is corrupt (nested too deeply)"),
    (("eval", "{nested_deep}"), "kbit.json is corrupt (nested too deeply)"),
    (("train", "--resume", "{number_huge}"), "kbit.json is corrupt (Exceeds the limit (4300 digits)"),
    (("eval", "{seed_text}", "--variant", "base"), "field 'config': invalid value for 'seed'"),
    (("train", "--resume", "{seed_text}"), "field 'config': invalid value for 'seed'"),
    (("eval", "{max_examples_text}", "--variant", "base"), "invalid value for 'max_examples'"),
    (("train", "--resume", "{max_examples_text}"), "invalid value for 'max_examples'"),
    (("eval", "{columns_int}", "--variant", "base"), "invalid value for 'columns': expected text, got int 7"),
    (("train", "--resume", "{columns_int}"), "invalid value for 'columns'"),
    (("eval", "{model_int}", "--variant", "base"), "invalid value for 'model': expected text, got int"),
    (("train", "--resume", "{model_int}"), "invalid value for 'model'"),
    (("eval", "{dataset_list}"), "'dataset' is a list"),
    (("train", "--resume", "{dataset_list}"), "'dataset' is a list"),
    (("train", "--resume", "{options_int}"), "invalid value for 'options'"),
    (("train", "--resume", "{options_list}"), "invalid value for 'options'"),
    (("eval", "{held_out_text}"), "invalid value for 'held_out'"),
    (("train", "--resume", "{packing_text}"), "invalid value for 'packing'"),
    (("train", "--resume", "{max_steps_negative}"), "invalid value for 'max_steps'"),
    (("train", "--resume", "{batch_list}"), "invalid value for 'batch_size'"),
    (("eval", "{name_climbs}", "--variant", "base"), "must be a plain folder name"),
    (("train", "--resume", "{steps_none}"), "the run would train no step"),
    (("train", "--resume", "{exports_ints}"), "field 'exports' must be a list of objects"),
    (("eval", "{history_text}"), "field 'loss_history' must be a list of objects"),
    # a resume continues the run as it started: what it trains cannot change
    (("train", "--resume", "{run}", "--max-steps", "80"), "--max-steps 80 (the run has 1)"),
    (("train", "--resume", "{run}", "--method", "lora"), "--method lora (the run has qlora)"),
    (("train", "--resume", "{run}", "--dataset", "{six}"), "with other training settings: --dataset"),
    (("train", "--resume", "{run}", "--model", "{model_copy}"), "with other training settings: --model"),
    (("train", "--resume", "{run}", "-o", "r=8"), "-o r=8 (the run has r=4)"),
    (("train", "--resume", "{run}", "--peft", "dora"), "-o peft_type=dora (the run has the default)"),
    (("train", "--resume", "{run}", "--epochs", "3"), "--epochs 3.0 (the run has 1.0)"),
    (("train", "--resume", "{run}", "--batch-size", "4"), "--batch-size 4 (the run has 2)"),
    (("train", "--resume", "{run}", "--grad-accum", "2"), "--grad-accum 2 (the run has 1)"),
    (("train", "--resume", "{run}", "--lr", "0.1"), "--lr 0.1 (the run has 0.002)"),
    (("train", "--resume", "{run}", "--seed", "5"), "--seed 5 (the run has 0)"),
    (("train", "--resume", "{run}", "--max-examples", "10"), "--max-examples 10 (the run has 12)"),
    (("train", "--resume", "{run}", "--held-out", "3"), "--held-out 3 (the run has the default)"),
    (("train", "--resume", "{run}", "--max-length", "64"), "--max-length 64 (the run has 256)"),
    (("train", "--resume", "{run}", "--scheduler", "cosine"), "--scheduler cosine (the run has linear)"),
    (("train", "--resume", "{run}", "--name", "other"), "--name other (the run has the default)"),
    (("train", "--resume", "{run}", "--max-steps", "80", "--method", "lora"),
     "--method lora (the run has qlora); --max-steps 80 (the run has 1)"),
    (("train", "--resume", "{run}", "--output", "{taken}"), "does not go with --resume: the resumed run stays in"),
    (("train", "--resume", "{run}", "--overwrite"), "--overwrite does not go with --resume"),
    # step settings that train nothing or more than the data holds
    ((*TRAIN, "--max-steps", "0", "--epochs", "0"), "the run would train no step"),
    ((*TRAIN, "--max-steps", "3000000000"), "invalid value for 'max_steps': expected an integer between 0 and 2147483647"),
    ((*TRAIN, "--grad-accum", "1000000", "--max-examples", "12", "--batch-size", "2"),
     "--grad-accum 1000000 asks for 1000000 micro-batches per optimizer step, but the"),
    ((*TRAIN, "--grad-accum", "7", "--max-examples", "12", "--batch-size", "2"), "use --grad-accum"),
]


def _inputs(root: Path, tiny: Path, finished: Path, args: tuple[str, ...]) -> dict[str, Path]:
    """The inputs ``args`` names, written into ``root`` (only those: the run copies are many)."""
    import shutil

    files: dict[str, Path] = {"tiny": tiny, "run": finished}
    for name, edit in RECORDS.items():
        if any("{" + name + "}" in a for a in args):
            files[name] = _with_record(root, finished, name, edit)
    for name, text in RAW_RECORDS.items():
        if any("{" + name + "}" in a for a in args):
            files[name] = _with_record(root, finished, name, lambda record: None)
            (files[name] / "kbit.json").write_text(text)
    if any("{six}" in a for a in args):
        files["six"] = root / "six.jsonl"
        files["six"].write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                                        for i in range(6)))
    if any("{model_copy}" in a for a in args):
        files["model_copy"] = root / "a-model"
        shutil.copytree(tiny, files["model_copy"])
    if any("{taken}" in a for a in args):
        files["taken"] = root / "taken"
        files["taken"].mkdir()
        (files["taken"] / "notes.txt").write_text("someone else's")
    return files


@pytest.mark.slow
@pytest.mark.parametrize("text, message", YAML_CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(YAML_CASES)])
def test_bad_config_file(isolated, tiny, run, capsys, text, message):
    head = [line for line in YAML_HEAD.format(tiny=tiny).splitlines(keepends=True)
            if not text.startswith(line.split(":")[0] + ":")]
    (isolated / "settings.yaml").write_text("".join(head) + text)
    assert_refused(["train", "--config", str(isolated / "settings.yaml")], message, capsys, isolated, run)


@pytest.mark.slow  # the run fixture trains
@pytest.mark.parametrize("text", ["", "# max_steps: 5\n", "{}\n"], ids=["empty", "comments", "empty-mapping"])
def test_a_config_file_without_settings_is_refused_rather_than_run_on_defaults(isolated, run, capsys, text):
    (isolated / "settings.yaml").write_text(text)
    assert_refused(["train", "--config", str(isolated / "settings.yaml")],
                   "holds no settings (it is empty or only comments)", capsys, isolated, run)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", RUN_CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(RUN_CASES)])
def test_bad_run_folder_or_resume(isolated, tiny, run, capsys, args, message):
    files = _inputs(isolated, tiny, run, args)
    assert_refused([a.format(**files) for a in args], message, capsys, isolated, run)
