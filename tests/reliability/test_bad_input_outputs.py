"""The bad-input table, output targets by containment (kbit/core/runs/outputs.py): no command replaces a folder
holding a run or its own inputs, writes inside another command's output, follows a link inside a kbit
output, or lets a run's kbit.json name lead a file out of the run.

Each case exits 2 with one line naming the problem, no traceback, nothing written (as ``test_bad_input``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kbit.core.data import load_task_data
from kbit.core.train.config import recorded_config

from tests.conftest import copy_run
from tests.reliability.refusals import assert_refused


def _output(folder: Path, kind: str) -> Path:
    """A folder kbit's ``kind`` output marks as its own: kbit.json for runs and quantized models, else report.json."""
    folder.mkdir(parents=True)
    (folder / ("report.json" if kind in ("eval", "compare") else "kbit.json")).write_text(json.dumps({"kind": kind}))
    return folder


def _files(root: Path, tiny: Path, run: Path) -> dict[str, Path]:
    """Every folder the table refers to, written into ``root``."""
    rows = "".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(24))
    files = {
        "run": run,
        "report": _output(root / "rep1", "eval"),
        "report_with_run": _output(root / "rep2", "eval"),
        "quantized": _output(root / "q1", "quantized"),
        "quantized_with_run": _output(root / "q2", "quantized"),
        "plain_with_run": root / "plain",
        "comparison": _output(root / "cmp", "compare"),
        "compare_linked_runs": _output(root / "cmp-linked-runs", "compare"),
        "compare_linked_run": _output(root / "cmp-linked-run", "compare"),
        "outside": root / "outside",
        "data_dir": root / "data",
        "model_copy": root / "a-model",
        "holder": root / "holder",
        "run_escape_name": root / "run-escape-name",
        "run_on_copy": root / "run-on-copy",
    }
    _output(files["report_with_run"] / "nested", "run")
    _output(files["quantized_with_run"] / "nested", "run")
    _output(files["plain_with_run"] / "a" / "b" / "run", "run")
    shutil.copytree(run, files["outside"] / "lora", symlinks=True)  # a run trained with other settings
    (files["compare_linked_runs"] / "runs").symlink_to(files["outside"], target_is_directory=True)
    (files["compare_linked_run"] / "runs").mkdir()
    (files["compare_linked_run"] / "runs" / "lora").symlink_to(files["outside"] / "lora", target_is_directory=True)
    files["data_dir"].mkdir()
    (files["data_dir"] / "train.jsonl").write_text(rows)
    shutil.copytree(tiny, files["model_copy"])
    shutil.copytree(tiny, files["holder"] / "model")
    (files["holder"] / "x.gguf").write_bytes(b"not ours")
    record = copy_run(run, files["run_escape_name"], symlinks=True, name="../../../../escaped")
    # a run made from model_copy and data_dir: what a command reading it must never replace
    shutil.copytree(run, files["run_on_copy"], symlinks=True)
    record["base_model"]["path"] = str(files["model_copy"])
    record["config"].update(model=str(files["model_copy"]), dataset=str(files["data_dir"] / "train.jsonl"))
    config = recorded_config(record["config"])  # the data it trained on, as a command reading the run rebuilds it
    record["dataset"]["fingerprint"] = load_task_data(config.dataset, columns=config.columns, held_out=config.held_out,
                                                      max_examples=config.max_examples, seed=config.seed).fingerprint()
    (files["run_on_copy"] / "kbit.json").write_text(json.dumps(record))
    return files


TRAIN = ("train", "--model", "{model_copy}", "--max-steps", "1", "--eval-limit", "0")
COMPARE = ("compare", "--model", "{model_copy}", "--max-steps", "1", "--methods", "lora")
QUANTIZE = ("quantize", "{model_copy}", "--method", "gptq")

CASES = [
    # a run inside an earlier report or quantized model: never deleted with it (issue 28, 1 and 2)
    (("eval", "{run}", "--out", "{report_with_run}"), "holds the kbit run"),
    (("eval", "{run}", "--out", "{report_with_run}", "--overwrite"), "holds the kbit run"),
    (("eval", "{run}", "--out", "{plain_with_run}"), "a folder holding another kbit output is never replaced"),
    (("eval", "{run}", "--out", "{plain_with_run}", "--overwrite"), "holds the kbit run"),
    ((*QUANTIZE, "--output", "{quantized_with_run}"), "holds the kbit run"),
    ((*QUANTIZE, "--output", "{quantized_with_run}", "--overwrite"), "holds the kbit run"),
    ((*QUANTIZE, "--output", "{plain_with_run}", "--overwrite"), "holds the kbit run"),
    ((*TRAIN, "--output", "{plain_with_run}", "--overwrite"), "holds the kbit run"),
    ((*COMPARE, "--out", "{plain_with_run}", "--overwrite"), "holds the kbit run"),
    # outputs are never nested: a new output inside another command's output is refused
    ((*TRAIN, "--output", "{report}/nested"), "lies inside the kbit report"),
    ((*TRAIN, "--output", "{quantized}/nested"), "lies inside the kbit quantized model"),
    ((*TRAIN, "--output", "{comparison}/other"), "lies inside the kbit comparison"),
    ((*TRAIN, "--output", "{comparison}/evals/lora"), "lies inside the kbit comparison"),
    ((*TRAIN, "--output", "{run}/adapter/nested"), "lies inside the kbit run"),
    (("eval", "{run}", "--out", "{quantized}/report"), "lies inside the kbit quantized model"),
    (("eval", "{run}", "--out", "{report}/again"), "lies inside the kbit report"),
    (("eval", "{run}", "--out", "{comparison}/runs/lora"), "lies inside the kbit comparison"),
    ((*QUANTIZE, "--output", "{report}/q"), "lies inside the kbit report"),
    ((*QUANTIZE, "--output", "{run}/other"), "lies inside the kbit run"),
    ((*COMPARE, "--out", "{report}/c"), "lies inside the kbit report"),
    ((*COMPARE, "--out", "{run}/c"), "lies inside the kbit run"),
    (("export", "{run}", "--output", "{report}/x.gguf"), "lies inside the kbit report"),
    (("export", "{run}", "--output", "{quantized}/x.gguf", "--overwrite"), "lies inside the kbit quantized model"),
    # a link inside a kbit output is never followed, and --overwrite is not suggested where it is refused (3)
    ((*COMPARE, "--out", "{compare_linked_runs}", "--overwrite"), "is reached through the symlink"),
    ((*COMPARE, "--out", "{compare_linked_runs}"), "kbit never follows a link inside its outputs"),
    ((*COMPARE, "--out", "{compare_linked_run}", "--overwrite"), "is reached through the symlink"),
    ((*COMPARE, "--out", "{compare_linked_run}"), "replace the link by a real folder or choose another path"),
    # the command's own inputs are never replaced (4)
    ((*TRAIN, "--output", "{model_copy}", "--overwrite"), "a-model, which this command reads; choose another path"),
    ((*TRAIN, "--output", "{model_copy}"), "which this command reads"),
    ((*TRAIN, "--dataset", "{data_dir}/train.jsonl", "--output", "{data_dir}", "--overwrite"), "holds"),
    ((*TRAIN, "--dataset", "{data_dir}/train.jsonl", "--output", "{data_dir}", "--overwrite"), "train.jsonl, which this command reads"),
    (("train", "--model", "{holder}/model", "--max-steps", "1", "--output", "{holder}", "--overwrite"), "which this command reads"),
    (("eval", "--model", "{model_copy}", "--out", "{model_copy}", "--overwrite"), "which this command reads"),
    (("eval", "--model", "{holder}/model", "--out", "{holder}", "--overwrite"), "which this command reads"),
    (("eval", "{run}", "--dataset", "{data_dir}/train.jsonl", "--out", "{data_dir}", "--overwrite"), "which this command reads"),
    ((*QUANTIZE, "--output", "{model_copy}", "--overwrite"), "which this command reads"),
    (("quantize", "{holder}/model", "--method", "gptq", "--output", "{holder}", "--overwrite"), "which this command reads"),
    ((*QUANTIZE, "--dataset", "{data_dir}/train.jsonl", "--output", "{data_dir}", "--overwrite"), "which this command reads"),
    ((*COMPARE, "--out", "{model_copy}", "--overwrite"), "which this command reads"),
    ((*COMPARE, "--dataset", "{data_dir}/train.jsonl", "--out", "{data_dir}", "--overwrite"), "which this command reads"),
    (("export", "{model_copy}", "--output", "{holder}/x.gguf"), "pass --overwrite"),  # a plain file: the rule as before
    # a run's kbit.json name never leads a file out of the run (5)
    (("export", "{run_escape_name}"), "kbit.json of run"),
    (("export", "{run_escape_name}"), "must be a plain folder name"),
    (("export", "{run_escape_name}", "--type", "f16"), "fix its 'name' field"),
    # found by a hostile-user probe: what a run was made from, other commands' outputs, the scaffold
    (("quantize", "{run_on_copy}", "--method", "gptq", "--output", "{data_dir}", "--overwrite"), "which this command reads"),
    (("quantize", "{run_on_copy}", "--method", "gptq", "--output", "{model_copy}", "--overwrite"), "which this command reads"),
    # what a run was made from, whichever of its variants is evaluated
    (("eval", "{run_on_copy}", "--variant", "merged", "--out", "{model_copy}", "--overwrite"), "which this command reads"),
    ((*TRAIN, "--output", "{quantized}", "--overwrite"), "is the kbit quantized model another kbit command wrote"),
    ((*TRAIN, "--output", "{report}", "--overwrite"), "is the kbit report another kbit command wrote"),
    (("eval", "{run}", "--limit", "3", "--out", "{quantized}", "--overwrite"), "is the kbit quantized model another"),
    ((*QUANTIZE, "--output", "{report}", "--overwrite"), "is the kbit report another kbit command wrote"),
    ((*COMPARE, "--out", "{quantized}", "--overwrite"), "is the kbit quantized model another kbit command wrote"),
    (("new-method", "foo", "--dir", "{run}/plugin"), "lies inside the kbit run"),
    (("new-method", "foo", "--dir", "{report}/plugin"), "lies inside the kbit report"),
    (("new-method", "qlora"), "method name 'qlora' is already the method from kbit"),
    (("new-method", "nf4"), "'nf4' is already an alias of the method 'qlora'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(CASES)])
def test_bad_input(isolated, tiny, run, capsys, args, message):
    files = _files(isolated, tiny, run)
    assert_refused([a.format(**files) for a in args], message, capsys, isolated, run)
    assert not list(isolated.parents[1].glob("escaped*")), "a file was written outside the run"


def _contents(root: Path) -> list[tuple[str, int]]:
    """Every path under ``root`` (links not followed) with its size, but kbit's cache."""
    return sorted((str(p.relative_to(root)), p.lstat().st_size if p.is_file() else 0)
                  for p in root.rglob("*") if "cache" not in p.relative_to(root).parts)
