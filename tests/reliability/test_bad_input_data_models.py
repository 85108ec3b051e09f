"""The bad-input table for datasets and model files: each case exits 2 with one line naming the
problem, no traceback, nothing written — and the cases that used to hang end within 60 seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import run_kbit
from tests.reliability.refusals import assert_refused, listing
from tests.reliability.test_bad_input import TRAIN

QUESTIONS = [f"What is {i} + 1?" for i in range(6)]


def _jsonl(answers) -> str:
    """Six question/answer rows; ``answers(i)`` is the raw JSON text of row i's answer."""
    return "".join(f'{{"question": "{q}", "answer": {answers(i)}}}\n' for i, q in enumerate(QUESTIONS))


def _tiny_with(root: Path, tiny: Path, name: str, change) -> Path:
    """A copy of the tiny model whose weights ``change(tensors)`` edited in place."""
    from safetensors.torch import load_file, save_file

    copy = root / name
    shutil.copytree(tiny, copy)
    weights = copy / "model.safetensors"
    tensors = load_file(str(weights))
    change(tensors)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return copy


def _set(tensors, key: str, value) -> None:
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[3] = value


def _parquet(path: Path, questions, answers) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"question": questions, "answer": answers}), str(path))
    return path


def _files(root: Path, tiny: Path) -> dict[str, Path]:
    def write(name: str, text: str) -> Path:
        (root / name).write_text(text)
        return root / name

    deep = "[" * 100_000 + "]" * 100_000
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    return {
        "tiny": tiny,
        "csv_extra": write("extra.csv", "question,answer\nWhat is 1?,1\nWhat is 2?,2,3\nWhat is 3?,3\n"),
        "csv_all_extra": write("all_extra.csv", "question,answer\nWhat is 1?,1,x\nWhat is 2?,2,y\nWhat is 3?,3,z\n"),
        "csv_short": write("short.csv", "question,answer\nWhat is 1?,1\nWhat is 2?\nWhat is 3?,3\n"),
        "csv_twice": write("twice.csv", "question,answer,answer\nWhat is 1?,1,2\nWhat is 2?,2,3\n"),
        "jsonl_nan": write("nan.jsonl", _jsonl(lambda i: "NaN" if i == 2 else f'"{i + 1}"')),
        "jsonl_infinity": write("infinity.jsonl", _jsonl(lambda i: "-Infinity" if i == 0 else f'"{i + 1}"')),
        "json_nan": write("nan.json", json.dumps([{"question": q, "answer": "1"} for q in QUESTIONS])[:-2] + ', "x": NaN}]'),
        "jsonl_huge_float": write("huge_float.jsonl", _jsonl(lambda i: "1e999" if i == 4 else f'"{i + 1}"')),
        "jsonl_big_int": write("big.jsonl", _jsonl(lambda i: "9" * 5001 if i == 1 else f'"{i + 1}"')),
        "jsonl_deep": write("deep.jsonl", '{"question": "a", "answer": "1"}\n{"question": ' + deep + ', "answer": "2"}\n'),
        "json_deep": write("deep.json", deep),
        "parquet_nan": _parquet(root / "nan.parquet", QUESTIONS, [1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]),
        "parquet_inf": _parquet(root / "inf.parquet", [1.5, float("inf"), 2.5, 3.5, 4.5, 5.5], ["1", "2", "3", "4", "5", "6"]),
        "nan_weights": _tiny_with(root, tiny, "nan-weights", lambda t: _set(t, q_proj, float("nan"))),
        "inf_weights": _tiny_with(root, tiny, "inf-weights", lambda t: _set(t, "model.norm.weight", float("inf"))),
        "int_weights": _tiny_with(root, tiny, "int-weights", lambda t: t.update({q_proj: (t[q_proj] * 100).to(__import__("torch").int8)})),
    }


CASES = [
    # a CSV row that does not fit the header would shift every column
    ((*TRAIN, "--dataset", "{csv_extra}"), "extra.csv line 3: 3 fields but the header has 2 (question, answer)"),
    ((*TRAIN, "--dataset", "{csv_all_extra}"), "all_extra.csv line 2: 3 fields but the header has 2"),
    ((*TRAIN, "--dataset", "{csv_short}"), "short.csv line 3: 1 fields but the header has 2"),
    ((*TRAIN, "--dataset", "{csv_twice}"), "column answer appears more than once in the header"),
    # NaN and Infinity are not JSON, and a float NaN is not text: none trains as "nan"
    ((*TRAIN, "--dataset", "{jsonl_nan}"), "nan.jsonl line 3: NaN is not a JSON value"),
    ((*TRAIN, "--dataset", "{jsonl_infinity}"), "infinity.jsonl line 1: -Infinity is not a JSON value"),
    ((*TRAIN, "--dataset", "{json_nan}"), "nan.json: NaN is not a JSON value"),
    ((*TRAIN, "--dataset", "{jsonl_huge_float}"), "huge_float.jsonl line 5: the number 1e999 is too large for a float"),
    ((*TRAIN, "--dataset", "{parquet_nan}"), "row 3: field 'answer' is the number nan, not text"),
    ((*TRAIN, "--dataset", "{parquet_inf}"), "row 2: field 'question' is the number inf, not text"),
    # what Python's json cannot hold: one line, not an internal error
    ((*TRAIN, "--dataset", "{jsonl_big_int}"), "big.jsonl line 2: an integer of 5001 digits is longer than kbit reads"),
    ((*TRAIN, "--dataset", "{jsonl_deep}"), "deep.jsonl line 2: its JSON is nested too deeply to read"),
    ((*TRAIN, "--dataset", "{json_deep}"), "deep.json: its JSON is nested too deeply to read"),
    # the built-in dataset has no columns to map
    ((*TRAIN, "--columns", "prompt=q,completion=a"), "--columns applies to a dataset file or a hub dataset"),
    ((*TRAIN, "--dataset", "arith", "--columns", "prompt=q,completion=a"), "the built-in 'arith' dataset"),
    # devices are not datasets or config files (and "does not exist" would be wrong)
    ((*TRAIN, "--dataset", "/dev/null"), "dataset file /dev/null is a character device, not a regular file"),
    ((*TRAIN, "--config", "/dev/zero"), "config file /dev/zero is a character device, not a regular file"),
    # base weights no training can start from: named at load, not blamed on the learning rate
    (("train", "--model", "{nan_weights}", "--max-steps", "1"), "tensor model.layers.0.self_attn.q_proj.weight holds NaN or infinite values"),
    (("train", "--model", "{inf_weights}", "--max-steps", "1"), "tensor model.norm.weight holds NaN or infinite values"),
    (("train", "--model", "{int_weights}", "--max-steps", "1"), "tensor model.layers.0.self_attn.q_proj.weight is stored as I8 (integers)"),
    (("eval", "--model", "{nan_weights}"), "holds NaN or infinite values"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(CASES)])
def test_bad_input(isolated, tiny, run, capsys, args, message):
    files = _files(isolated, tiny)
    assert_refused([a.format(**files) for a in args], message, capsys, isolated, run)


# Cases that hung (or took minutes) before they were refused: each runs in a subprocess that is
# killed after 60 seconds, so a regression fails the test instead of hanging the suite.
HANG_LIMIT_S = 60


def _fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _hang_files(root: Path, tiny: Path) -> dict[str, Path]:
    fifo_weights = root / "fifo-weights"
    shutil.copytree(tiny, fifo_weights)
    _fifo(fifo_weights / "model.safetensors")
    fifo_config = root / "fifo-config"
    shutil.copytree(tiny, fifo_config)
    _fifo(fifo_config / "config.json")
    huge = root / "huge-layers"
    shutil.copytree(tiny, huge)
    config = json.loads((tiny / "config.json").read_text())
    (huge / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1_000_000}))
    return {"tiny": tiny, "fifo_weights": fifo_weights, "fifo_config": fifo_config, "huge": huge,
            "fifo_jsonl": _fifo(root / "data.jsonl"), "fifo_yaml": _fifo(root / "train.yaml"),
            "fifo_gguf": _fifo(root / "model.gguf")}


HANG_CASES = [
    ((*TRAIN, "--held-out", "7000"), "only 8100 distinct questions exist and 2000 are for training; hold out at most 6100"),
    ((*TRAIN, "--held-out", "0.9"), "hold out at most 6100 (a count up to 6100, or a fraction up to 0.75)"),
    ((*TRAIN, "--held-out", "99%"), "hold out at most 6100"),
    (("train", "--model", "{fifo_weights}", "--max-steps", "1"), "model.safetensors is a named pipe (FIFO), not a regular file"),
    (("eval", "--model", "{fifo_weights}"), "model.safetensors is a named pipe (FIFO)"),
    (("train", "--model", "{fifo_config}", "--max-steps", "1"), "config.json is a named pipe (FIFO)"),
    (("train", "--model", "{fifo_gguf}", "--max-steps", "1"), "model file {fifo_gguf} is a named pipe (FIFO)"),
    (("eval", "{fifo_gguf}"), "input {fifo_gguf} is a named pipe (FIFO)"),
    ((*TRAIN, "--dataset", "{fifo_jsonl}"), "dataset file {fifo_jsonl} is a named pipe (FIFO), not a regular file"),
    ((*TRAIN, "--config", "{fifo_yaml}"), "config file {fifo_yaml} is a named pipe (FIFO)"),
    (("train", "--model", "{huge}", "--max-steps", "1"), "it declares 1000000 layers; the weight files hold 2 layers"),
    (("eval", "{huge}", "--limit", "1"), "it declares 1000000 layers; the weight files hold 2 layers"),
    (("eval", "--model", "{huge}"), "config.json describes weights the files lack (it declares 1000000 layers"),
]


@pytest.mark.parametrize("args, message", HANG_CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(HANG_CASES)])
def test_bad_input_that_hung_ends_in_time(tmp_path, tiny, args, message):
    files = _hang_files(tmp_path, tiny)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBIT_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", KBIT_CACHE=str(tmp_path / "cache"))
    before = listing(tmp_path)
    started = time.monotonic()
    try:
        result = run_kbit(*[a.format(**files) for a in args], env=env, cwd=tmp_path, timeout=HANG_LIMIT_S)
    except Exception as exc:  # subprocess.TimeoutExpired: it was killed
        pytest.fail(f"kbit did not end within {HANG_LIMIT_S} s on bad input ({type(exc).__name__})")
    assert time.monotonic() - started < HANG_LIMIT_S
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbit: error: "), result.stderr[-2000:]
    assert message.format(**files) in lines[0], lines[0]
    after = [entry for entry in listing(tmp_path) if not entry[0].startswith("cache")]
    assert after == before, "the failed command left files behind"
