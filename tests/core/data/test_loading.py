"""Reading dataset files into examples: CSV checked row by row, JSON strictly, arith sized to what exists."""

from __future__ import annotations

import json
import time

import pytest

from kbit.core.data import Example, every_assistant_turn, load_task_data, trained_prompts
from kbit.core.data.arithmetic import distinct_questions, generate
from kbit.core.data.split import take_held_out
from kbit.core.errors import ConfigError


def test_csv_reads_quoted_commas_and_newlines_and_empty_cells_as_null(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('\ufeffquestion,answer,note\n"What is 1, plus 1?",2,\n"Two\nlines?",yes,x\nWhat is 3?,,\n'
                    'What is 4?,007,y\n', encoding="utf-8")
    data = load_task_data(str(path), held_out=1)
    examples = sorted((*data.train, *data.held_out), key=lambda e: e.prompt[0][1])
    assert [(e.prompt[0][1], e.completion) for e in examples] == [
        ("Two\nlines?", "yes"), ("What is 1, plus 1?", "2"), ("What is 4?", "007")]  # the empty answer is dropped


def test_a_csv_row_with_an_extra_field_is_refused_not_shifted(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question,answer\nWhat is 1?,1,x\nWhat is 2?,2,y\nWhat is 3?,3,z\n")
    with pytest.raises(ConfigError, match=r"line 2: 3 fields but the header has 2 \(question, answer\)"):
        load_task_data(str(path))


@pytest.mark.parametrize("value, message", [
    ("NaN", "NaN is not a JSON value"), ("Infinity", "Infinity is not a JSON value"),
    ("-Infinity", "-Infinity is not a JSON value"), ("1e999", "the number 1e999 is too large for a float"),
    ('"1", "answer": "2"', "key 'answer' is given twice in one object"),
])
def test_json_numbers_python_would_read_as_nan_or_infinity_are_refused(tmp_path, value, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n' f'{{"question": "b", "answer": {value}}}\n')
    with pytest.raises(ConfigError, match=f"line 2: {message}"):
        load_task_data(str(path))


def test_rows_with_many_keys_read_in_linear_time(tmp_path):
    row = {"prompt": "q", "completion": "a", **{f"c{j}": "x" for j in range(20_000)}}
    path = tmp_path / "wide.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(10)))
    started = time.perf_counter()
    assert len(load_task_data(str(path), held_out=1).train) == 9
    assert time.perf_counter() - started < 5  # a key-by-key duplicate search took 35 s here


def test_a_refused_row_is_named_by_the_line_it_starts_on(tmp_path):
    rows = [json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(5)]
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join([*rows, "", "", "", *rows, '{"prompt": "x"}']) + "\n")
    with pytest.raises(ConfigError, match="line 14: missing field 'completion'"):
        load_task_data(str(jsonl))
    csv = tmp_path / "data.csv"
    csv.write_text('prompt,completion\n"two\nlines",a\n\n,b\n')  # a null prompt on line 5
    with pytest.raises(ConfigError, match="line 5: field 'prompt' is null"):
        load_task_data(str(csv))


def test_a_file_in_another_encoding_is_named_with_its_line_and_the_fix(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "a", "completion": "b"}\n{"prompt": "café", "completion": "b"}\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text at line 2 .*re-save it as UTF-8"):
        load_task_data(str(latin))
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("prompt,completion\na,b\n", encoding="utf-16")
    with pytest.raises(ConfigError, match="is not UTF-8 text: it starts with a UTF-16 byte order mark; re-save it as UTF-8"):
        load_task_data(str(utf16))
    for suffix in (".jsonl", ".csv"):  # without a byte order mark its ASCII decodes as UTF-8, NUL bytes and all
        bare = tmp_path / f"bare{suffix}"
        bare.write_bytes('{"prompt": "a", "completion": "b"}\n'.encode("utf-16-le") if suffix == ".jsonl"
                         else "prompt,completion\na,b\n".encode("utf-16-le"))
        with pytest.raises(ConfigError, match="it looks like UTF-16 without a byte order mark .*re-save it as UTF-8"):
            load_task_data(str(bare))


def test_columns_of_two_layouts_are_read_as_the_first_with_a_warning(tmp_path, caplog):
    path = tmp_path / "data.jsonl"
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "prompt": "x",
           "completion": "y"}
    path.write_text((json.dumps(row) + "\n") * 4)
    with caplog.at_level("WARNING", logger="kbit"):
        data = load_task_data(str(path), held_out=1)
    assert data.train[0].completion == "a"
    assert "reads it as messages (messages) and ignores completion, prompt; pass --columns" in caplog.text


def test_a_hub_dataset_with_the_hub_out_of_reach_is_refused_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    with pytest.raises(ConfigError, match=r"cannot load dataset 'someorg/somedata': the hub \(hub.invalid\) cannot be "
                                          "reached .*pass a local"):
        load_task_data("someorg/somedata")


def test_numbers_and_booleans_train_as_json_wrote_them(tmp_path):
    path = tmp_path / "data.jsonl"
    answers = ["true", "false", "1e20", "1.50", "7", "-0.0"]
    path.write_text("".join(f'{{"question": "q{i}", "answer": {a}}}\n' for i, a in enumerate(answers)))
    data = load_task_data(str(path), held_out=1)
    examples = sorted((*data.train, *data.held_out), key=lambda e: e.prompt[0][1])
    assert [e.completion for e in examples] == answers  # not "True", "1e+20", "1.5"


def test_arith_holds_out_up_to_every_question_that_exists_and_no_more():
    assert distinct_questions(("+",)) == 90 * 90
    assert distinct_questions(("+", "-")) == 90 * 90 + 90 * 91 // 2
    data = load_task_data("arith", held_out=6100)
    questions = [e.prompt[0][1] for e in (*data.train, *data.held_out)]
    assert len(data.train) == 2000 and len(data.held_out) == 6100 and len(set(questions)) == 8100
    with pytest.raises(ConfigError, match="hold out at most 6100"):
        load_task_data("arith", held_out=6101)
    with pytest.raises(ConfigError, match=r"hold out at most 7988 \(a count up to 7988, or a fraction up to 0.98\)"):
        load_task_data("arith", held_out=0.99, max_examples=112)
    assert len(load_task_data("arith", held_out=0.98, max_examples=112).held_out) == 5488


def test_generate_refuses_more_questions_than_exist_instead_of_drawing_for_ever():
    with pytest.raises(ValueError, match="only 8100 exist"):
        generate(train_size=8000, held_out_size=101)


def test_a_held_out_count_beyond_a_datasets_own_split_is_refused_naming_its_size():
    assert take_held_out(list(range(5)), 5, "squad") == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"--held-out 6 asks for more .* holds \(5\); hold out at most 5"):
        take_held_out(list(range(5)), 6, "squad")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_byte_order_mark_at_the_start_of_a_json_file_is_not_data(tmp_path, suffix):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    text = "\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows)
    plain, marked = tmp_path / f"plain{suffix}", tmp_path / f"marked{suffix}"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    assert load_task_data(str(marked), held_out=1).fingerprint() == load_task_data(str(plain), held_out=1).fingerprint()


def test_held_out_items_that_repeat_a_training_prompt_are_counted_in_a_warning(tmp_path, caplog):
    import logging

    rows = [{"prompt": f"What is {i} + {i}?", "completion": str(2 * i)} for i in range(10)] * 4  # each row 4 times
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        data = load_task_data(str(path), held_out=8)
    shared = trained_prompts(data.train, data.held_out)
    assert shared == 8  # ten distinct prompts: every held-out one is also trained on
    assert f"{shared} of 8 held-out items of {path} ask a prompt a training example asks too" in caplog.text

    distinct = tmp_path / "distinct.jsonl"
    distinct.write_text("".join(json.dumps(row) + "\n" for row in rows[:10]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kbit"):
        load_task_data(str(distinct), held_out=2)
    assert "ask a prompt a training example asks too" not in caplog.text


def test_a_folder_saved_by_datasets_reads_as_the_same_data_as_its_jsonl(tmp_path):
    import datasets

    rows = [{"prompt": f"What is {i} + 1?", "completion": str(i + 1)} for i in range(20)]
    jsonl = tmp_path / "sums.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "splits"))
    expected = load_task_data(str(jsonl), held_out=4).fingerprint()
    assert load_task_data(str(tmp_path / "saved"), held_out=4).fingerprint() == expected
    assert load_task_data(str(tmp_path / "splits"), held_out=4).fingerprint() == expected

    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(ConfigError, match="holds the splits test, none named 'train'"):
        load_task_data(str(tmp_path / "no-train"))
    with pytest.raises(ConfigError, match="is a folder, not data: pass a .*save_to_disk wrote"):
        load_task_data(str(tmp_path))  # any other folder


def test_sharegpt_and_alpaca_rows_read_as_their_chat_and_instruction(tmp_path):
    sharegpt = tmp_path / "sharegpt.jsonl"
    sharegpt.write_text("".join(json.dumps({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": f"{i}+1?"}, {"from": "gpt", "value": str(i + 1)}]})
        + "\n" for i in range(6)))
    example = next(e for e in load_task_data(str(sharegpt), held_out=1).train if e.completion == "3")
    assert example.prompt == (("system", "Be brief."), ("user", "2+1?"))
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": "Add one", "input": str(i) if i else "", "output": str(i + 1)})
                              + "\n" for i in range(6)))
    examples = {e.completion: e.prompt for e in (*load_task_data(str(alpaca), held_out=1).train,
                                                 *load_task_data(str(alpaca), held_out=1).held_out)}
    assert examples["3"] == (("user", "Add one\n2"),) and examples["1"] == (("user", "Add one"),)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "human", "content": "hi"}, {"role": "assistant", "content": "x"}],
     "line 1: message 1 has role 'human'; use one of system, user, assistant, tool, developer"),
    ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}],
     "line 1: these messages have ShareGPT's 'from' and 'value' keys; name the column 'conversations'"),
])
def test_a_chat_row_with_roles_no_template_knows_is_refused(tmp_path, messages, message):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_task_data(str(path))


def test_openai_content_parts_read_as_their_text_joined_by_line_breaks(tmp_path):
    path = tmp_path / "parts.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
        {"role": "user", "content": [{"type": "text", "text": f"Add {i}"}, {"type": "text", "text": "to one"}]},
        {"role": "assistant", "content": [{"type": "text", "text": str(i + 1)}]}]}) + "\n" for i in range(4)))
    example = load_task_data(str(path), held_out=1).train[0]
    assert example.prompt[0] == ("system", "Be terse.") and example.prompt[1][1].endswith("\nto one")
    assert example.completion == str(int(example.prompt[1][1].split()[1]) + 1)


def test_every_assistant_turn_of_a_conversation_becomes_an_example_with_the_turns_before_it():
    conversation = Example(prompt=[("assistant", "Hi, ask away."), ("user", "1 + 1?"), ("assistant", "2"),
                                   ("user", "and + 1?"), ("assistant", " "), ("user", "and + 2?")], completion="4")
    examples = every_assistant_turn(conversation)
    assert [(len(e.prompt), e.completion) for e in examples] == [(2, "2"), (6, "4")]  # the opening and blank turns: context
    assert examples[0].prompt == conversation.prompt[:2] and examples[0].answers == ("2",)
    assert every_assistant_turn(Example(prompt=[("user", "q")], completion="a")) == [Example(prompt=[("user", "q")], completion="a")]


def test_alpaca_system_and_history_become_turns_of_the_prompt(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Add {i}", "input": "", "output": str(i), "system": "Be terse.",
                                        "history": [["hi", "hello"]]}) + "\n" for i in range(4)))
    example = load_task_data(str(path), held_out=1).train[0]
    assert example.prompt[:3] == (("system", "Be terse."), ("user", "hi"), ("assistant", "hello"))
    assert example.prompt[3][0] == "user" and example.prompt[3][1].startswith("Add ")


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "content": None, "tool_calls": [{}]},
                    {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "sunny"}]}],
     "line 1: message 2 makes a tool call"),
    ([{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
      {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
     "line 2: missing field 'conversations': the row is in the messages layout, the file's first row in the sharegpt one"),
    ([{"messages": [{"role": "user", "content": [{"type": "text", "text": "w?"}, {"type": "image_url", "image_url": {}}]},
                    {"role": "assistant", "content": "sunny"}]}],
     "line 1: message 1 has a part of type 'image_url' in its 'content'; kbit trains on text: keep only the text parts"),
])
def test_chat_rows_kbit_cannot_train_as_written_are_refused(tmp_path, rows, message):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ConfigError, match=message):
        load_task_data(str(path))
