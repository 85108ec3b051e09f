"""The official nested SQuAD v1.1/v2.0 JSON, read natively (fixtures written in our own words)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbit.core.data import load_task_data
from kbit.core.data.formats import UNANSWERABLE
from kbit.core.errors import ConfigError
from kbit.core.measure.scoring import score

FIXTURES = Path(__file__).parents[2] / "fixtures" / "data"


def _all(data):
    return [*data.train, *data.held_out]


def test_v1_1_document_becomes_one_example_per_question():
    data = load_task_data(str(FIXTURES / "squad_v1_like.json"), held_out=4)
    examples = _all(data)
    assert data.task == "squad" and len(examples) == 16 and len(data.held_out) == 4
    granite = next(e for e in examples if "What stone" in e.prompt[0][1])
    assert granite.completion == "grey granite" and granite.answers == ("grey granite", "granite")
    assert "Context: The old lighthouse on Gull Point" in granite.prompt[0][1]
    assert UNANSWERABLE not in granite.prompt[0][1]  # v1.1 has no unanswerable questions


def test_v2_0_unanswerable_questions_are_answered_unanswerable_and_scored():
    examples = _all(load_task_data(str(FIXTURES / "squad_v2_like.json")))
    impossible = [e for e in examples if e.completion == UNANSWERABLE]
    assert len(impossible) == 3 and all(e.answers == (UNANSWERABLE,) for e in impossible)
    assert all(f"'{UNANSWERABLE}'" in e.prompt[0][1] for e in examples)  # every v2 prompt allows it
    assert score("squad", "Unanswerable.", list(impossible[0].answers))["exact_match"] == 1.0
    assert score("squad", "1874", list(impossible[0].answers))["exact_match"] == 0.0


def test_flat_v2_rows_of_the_hubs_layout_mark_unanswerable_by_an_empty_answer_list(tmp_path):
    rows = [{"context": f"Ada kept lamp {i}.", "question": f"Who kept lamp {i}?",
             "answers": {"text": ["Ada"] if i % 3 else [], "answer_start": [0] if i % 3 else []}} for i in range(9)]
    path = tmp_path / "squad_v2.jsonl"  # rajpurkar/squad_v2: no is_impossible field
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    examples = _all(load_task_data(str(path), held_out=2))
    assert sorted(e.completion for e in examples) == ["Ada"] * 6 + [UNANSWERABLE] * 3
    assert all(f"'{UNANSWERABLE}'" in e.prompt[0][1] for e in examples)  # every prompt allows it, not only theirs


def _document(tmp_path: Path, qas: list) -> str:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": "Ada kept the lamp.", "qas": [{"question": "Who kept the lamp?", "id": "1", "answers": [{"text": "Ada", "answer_start": 0}]}, *qas]}]}]}))
    return str(path)


@pytest.mark.parametrize("qa, message", [
    ({"question": "Why?", "id": "2", "answers": []}, r"data\[0\].paragraphs\[0\].qas\[1\]: has no answer text and is not marked is_impossible"),
    ({"id": "2", "answers": [{"text": "Ada"}]}, r"qas\[1\]: needs a 'question' text"),
    ({"question": "Who?", "answers": ["Ada"]}, r"qas\[1\]: 'answers' must be a list of"),
])
def test_a_malformed_document_is_refused_naming_where(tmp_path, qa, message):
    with pytest.raises(ConfigError, match=message):
        load_task_data(_document(tmp_path, [qa]))
