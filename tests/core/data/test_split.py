"""Held-out sizes (``--held-out N|FRACTION``) and the splits they make, through ``load_task_data``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbit.core.data import load_task_data, trained_prompts
from kbit.core.data.split import held_out_size, recorded_held_out
from kbit.core.errors import ConfigError


@pytest.mark.parametrize("text, expected", [("50", 50), (50, 50), ("0.1", 0.1), (0.25, 0.25), ("10%", 0.1),
                                            (" 7 ", 7), (30.0, 30), (None, None)])
def test_counts_and_fractions_are_read(text, expected):
    value = held_out_size(text)
    assert value == pytest.approx(expected) if expected is not None else value is None
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "1.0", "nan", "inf", "lots", "", "100%", "0%", True, 2.5, -0.1])
def test_nonsense_is_refused_naming_every_form(text):
    with pytest.raises(ValueError, match=r"a count of held-out examples .*, a fraction between 0 and 1 .* or a file of "
                                         r"them \(\.jsonl, \.json, \.csv, \.parquet\)"):
        held_out_size(text)


@pytest.mark.parametrize("text", ["valid.jsonl", "data/test.CSV", "~/eval.parquet", "held/out"])
def test_a_path_names_a_held_out_file(text):
    assert held_out_size(text) == text


def _rows(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(count)))
    return path


def test_a_count_holds_out_exactly_that_many_and_the_split_is_disjoint(tmp_path):
    data = load_task_data(str(_rows(tmp_path, 40)), held_out=12)
    assert len(data.held_out) == 12 and len(data.train) == 28
    assert not {e.prompt for e in data.held_out} & {e.prompt for e in data.train}


def test_the_default_is_ten_percent_of_a_file_and_the_same_as_an_explicit_tenth(tmp_path):
    path = str(_rows(tmp_path, 40))
    default, tenth = load_task_data(path), load_task_data(path, held_out=0.1)
    assert len(default.held_out) == 4 and default.fingerprint() == tenth.fingerprint()


def test_a_count_that_leaves_nothing_to_train_on_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--held-out 40 leaves no training examples: dataset .* has 40"):
        load_task_data(str(_rows(tmp_path, 40)), held_out=40)


def test_arith_takes_a_count_or_a_fraction_and_defaults_to_100():
    assert len(load_task_data("arith", max_examples=200).held_out) == 100
    assert len(load_task_data("arith", max_examples=200, held_out=30).held_out) == 30
    fraction = load_task_data("arith", max_examples=180, held_out=0.1)
    assert len(fraction.held_out) == 20 and len(fraction.train) == 180  # 10% of all 200 questions


def test_runs_of_kbit_0_2_are_split_as_they_were():
    assert recorded_held_out({"dataset": "rows.jsonl", "held_out_fraction": 0.2}) == 0.2
    # kbit 0.2 ignored the fraction for arith and held out 100 questions: read as the default
    assert recorded_held_out({"dataset": "arith", "held_out_fraction": 0.1}) is None
    assert recorded_held_out({"dataset": "rows.jsonl", "held_out": 25}) == 25


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_held_out_file_is_scored_whole_and_the_dataset_trained_on_whole(tmp_path):
    train = _rows(tmp_path, 30)
    valid = _write(tmp_path / "valid.jsonl", [{"question": "What is 5 + 1?", "answer": "6"},  # a training prompt
                                              {"question": "What is 70 + 1?", "answer": "71"}])
    data = load_task_data(str(train), held_out=held_out_size(str(valid)), max_examples=20)
    assert len(data.train) == 20 and [e.completion for e in data.held_out] == ["6", "71"]
    assert trained_prompts(data.train, data.held_out) == 1  # counted by the command, against the rows it trained on
    chat = _write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "What is 9 + 9?"},
                                                          {"role": "assistant", "content": "18"}]}])
    assert [e.completion for e in load_task_data(str(train), held_out=str(chat)).held_out] == ["18"]  # another layout, same task


@pytest.mark.parametrize("dataset, held, message", [
    ("arith", "valid.jsonl", "the built-in 'arith' dataset draws its own held-out questions; pass --dataset FILE"),
    ("rows.jsonl", "missing.jsonl", "held-out file .*missing.jsonl does not exist"),
    ("rows.jsonl", "empty.jsonl", "held-out file .*empty.jsonl is empty"),
    ("rows.jsonl", "squad.jsonl", "squad.jsonl is scored as the squad task and dataset .*rows.jsonl as the generic one"),
    ("rows.jsonl", "qa.jsonl", "held-out file .*qa.jsonl has no known format \\(columns: a, q\\); write its items in one"),
    ("rows.jsonl", "rows.jsonl", "--held-out .*rows.jsonl is the dataset file itself, whose every row trains"),
])
def test_a_held_out_file_that_cannot_be_scored_beside_the_dataset_is_refused(tmp_path, dataset, held, message):
    _rows(tmp_path, 10)
    _write(tmp_path / "valid.jsonl", [{"prompt": "a", "completion": "b"}])
    (tmp_path / "empty.jsonl").write_text("")
    _write(tmp_path / "qa.jsonl", [{"q": "1 + 1?", "a": "2"}])
    _write(tmp_path / "squad.jsonl", [{"context": "c", "question": "q", "answers": {"text": ["a"], "answer_start": [0]}}])
    reference = dataset if dataset == "arith" else str(tmp_path / dataset)
    with pytest.raises(ConfigError, match=message):
        load_task_data(reference, held_out=str(tmp_path / held))


def test_columns_map_a_held_out_file_only_where_it_has_those_columns(tmp_path):
    train = tmp_path / "faq.jsonl"
    _write(train, [{"q": f"question {i}", "a": f"answer {i}"} for i in range(6)])
    mapped = _write(tmp_path / "mapped.jsonl", [{"q": "question 9", "a": "answer 9"}])
    own = _write(tmp_path / "own.jsonl", [{"prompt": "question 8", "completion": "answer 8"}])
    for held, completion in ((mapped, "answer 9"), (own, "answer 8")):
        data = load_task_data(str(train), columns="prompt=q,completion=a", held_out=str(held))
        assert [e.completion for e in data.held_out] == [completion] and len(data.train) == 6
