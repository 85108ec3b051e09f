"""Row formats: how a dataset row becomes an ``Example``.

Known formats are detected from column names; ``--columns prompt=COL,completion=COL[,answer=COL]``
maps any other table.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kbit.core.data.examples import Example
from kbit.core.errors import ConfigError

RowConverter = Callable[[Mapping[str, Any]], Example]


def field_text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    """``row[key]`` as text. A null value is refused (``required``) or read as "" — never as "None"."""
    value = row[key]
    if value is None:
        if required:
            raise ValueError(f"field '{key}' is null")
        return ""
    return as_text(value, key)


def as_text(value: Any, key: str) -> str:
    """A field's non-null ``value`` as text; ``ValueError`` naming ``key`` for an object, a list, or a
    NaN/infinite number (a parquet or pandas NaN would otherwise train as the text "nan")."""
    if isinstance(value, (dict, list)):
        raise ValueError(f"field '{key}' must be text, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"field '{key}' is the number {value}, not text; write the value as text, "
                         "or null where there is none")
    if type(value).__name__ in ("bool", "bool_"):  # Python's and numpy's (parquet): as JSON writes it, not "True"
        return "true" if value else "false"
    return getattr(value, "text", None) or str(value)  # a JSON number as written (kbit.core.data.loading.JSONNumber)


def openmath(row: Mapping[str, Any]) -> Example:
    """OpenMathInstruct-style: ``problem``, ``generated_solution`` (or ``solution``), ``expected_answer``."""
    key = "generated_solution" if row.get("generated_solution") else "solution"
    solution = as_text(row.get(key) or "", key)
    answer = row.get("expected_answer")
    if answer is None:
        boxed = re.findall(r"\\boxed\{([^{}]*)\}", solution)
        answer = boxed[-1] if boxed else ""
    return Example(prompt=[("user", field_text(row, "problem"))], completion=solution,
                   answers=[as_text(answer, "expected_answer")])


UNANSWERABLE = "unanswerable"
"""The answer kbit trains and scores for a SQuAD v2.0 question its context does not answer."""
SQUAD_PROMPT = "Answer with a short span from the context."
SQUAD_V2_PROMPT = f"Answer with a short span from the context, or with '{UNANSWERABLE}' if the context does not answer it."


def squad(row: Mapping[str, Any]) -> Example:
    """SQuAD: ``context``, ``question``, ``answers`` ({"text": [...]}); the first answer is the target.

    A row with an ``is_impossible`` field is SQuAD v2.0: its prompt allows the answer
    ``unanswerable``, which is the target (and the gold answer) of a row whose ``is_impossible`` is true.
    """
    v2 = "is_impossible" in row
    if v2 and _flag(row["is_impossible"]):
        texts = [UNANSWERABLE]
    else:
        row["answers"]  # a row without the field is refused as missing it
        texts = _answer_texts(row)
    if not texts:
        raise ValueError("row has no answer text")
    prompt = (f"{SQUAD_V2_PROMPT if v2 else SQUAD_PROMPT}\nContext: {field_text(row, 'context')}\n"
              f"Question: {field_text(row, 'question')}")
    return Example(prompt=[("user", prompt)], completion=as_text(texts[0], "answers"),
                   answers=[as_text(t, "answers") for t in texts if t is not None])


def _answer_texts(row: Mapping[str, Any]) -> list[Any]:
    answers = row.get("answers")
    return list(answers.get("text") or []) if isinstance(answers, Mapping) else list(answers or [])


def mark_unanswerable(rows: Sequence[dict[str, Any]]) -> None:
    """Flat SQuAD v2.0 (the hub's ``squad_v2``) marks a question its context does not answer by an empty answer
    list and has no ``is_impossible`` field. Where any of ``rows`` has one (and none has the field), every row
    gets ``is_impossible``, in place, so every prompt allows the answer ``unanswerable``, as in a v2.0 document."""
    if any("is_impossible" in row for row in rows) or all(_answer_texts(row) for row in rows):
        return
    for row in rows:
        row["is_impossible"] = not _answer_texts(row)


def _flag(value: Any) -> bool:
    """A true/false field; a CSV cell is text, where "False" and "0" are false."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def is_squad_document(data: Any) -> bool:
    """The official nested SQuAD JSON: ``{"version", "data": [{"title", "paragraphs": [...]}]}``."""
    articles = data.get("data") if isinstance(data, Mapping) else None
    return isinstance(articles, list) and bool(articles) and isinstance(articles[0], Mapping) and "paragraphs" in articles[0]


def squad_rows(document: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The questions of a nested SQuAD v1.1/v2.0 document as flat rows for ``squad``.

    A v2.0 document (``version`` v2…, or any question with ``is_impossible``) gives every row an
    ``is_impossible`` field. Refuses a document of another shape, naming where (``data[0].paragraphs[2]``).
    """
    def fail(where: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: {where}: {problem}; expected the SQuAD layout "
                           '{"data": [{"paragraphs": [{"context", "qas": [{"question", "answers"}]}]}]}')

    def items(value: Any, where: str, key: str) -> list[Any]:
        found = value.get(key) if isinstance(value, Mapping) else None
        if not isinstance(found, list):
            raise fail(where, f"'{key}' must be a list")
        return found

    v2 = str(document.get("version", "")).lstrip("v").startswith("2")
    rows: list[dict[str, Any]] = []
    for a, article in enumerate(items(document, "document", "data")):
        for p, paragraph in enumerate(items(article, f"data[{a}]", "paragraphs")):
            where = f"data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, Mapping) else None
            if not isinstance(context, str) or not context.strip():
                raise fail(where, "'context' must be non-empty text")
            for q, qa in enumerate(items(paragraph, where, "qas")):
                spot = f"{where}.qas[{q}]"
                if not isinstance(qa, Mapping) or not isinstance(qa.get("question"), str):
                    raise fail(spot, "needs a 'question' text")
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(isinstance(x, Mapping) and isinstance(x.get("text"), str) for x in answers):
                    raise fail(spot, "'answers' must be a list of {\"text\", \"answer_start\"} objects")
                impossible = bool(qa.get("is_impossible", False))
                if not impossible and not any(x["text"].strip() for x in answers):
                    raise fail(spot, "has no answer text and is not marked is_impossible")
                v2 = v2 or "is_impossible" in qa
                rows.append({"id": qa.get("id"), "title": article.get("title"), "context": context,
                             "question": qa["question"], "answers": {"text": [x["text"] for x in answers]},
                             "is_impossible": impossible})
    if not v2:
        for row in rows:
            del row["is_impossible"]
    return rows


CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")
# ShareGPT's speakers (``from``), as the chat roles they stand for (LLaMA-Factory's and axolotl's mapping).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "tool": "tool", "function_call": "assistant", "observation": "tool"}


def chat_messages(row: Mapping[str, Any]) -> Example:
    """Chat rows: ``messages`` = [{"role", "content"}, …]; the last assistant turn is the target."""
    return _chat(row["messages"], "messages", "role", "content", {role: role for role in CHAT_ROLES})


def sharegpt(row: Mapping[str, Any]) -> Example:
    """ShareGPT rows: ``conversations`` = [{"from": "human"/"gpt"/"system", "value"}, …]; the last turn is the target."""
    return _chat(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)


def _chat(messages: Any, column: str, role_key: str, text_key: str, roles: Mapping[str, str]) -> Example:
    """Every turn before the last is the prompt and the last, the assistant's, the completion."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{column}' must be a non-empty list")
    if not all(isinstance(m, Mapping) for m in messages):
        raise ValueError(f"every message must be an object with '{role_key}' and '{text_key}'")
    if column == "messages" and role_key not in messages[0] and {"from", "value"} <= set(messages[0]):
        raise ValueError("these messages have ShareGPT's 'from' and 'value' keys; name the column 'conversations', "
                         "or write each message as {\"role\", \"content\"}")
    turns = []
    for number, message in enumerate(messages, start=1):
        if message.get("tool_calls") or message.get("function_call"):
            raise ValueError(f"message {number} makes a tool call (tool_calls), which kbit does not train: the chat "
                             "template would drop it; remove tool-calling conversations from the data")
        speaker = field_text(message, role_key)
        if speaker.lower() not in roles:
            raise ValueError(f"message {number} has {role_key} '{speaker}'; use one of {', '.join(dict.fromkeys(roles))}")
        turns.append((roles[speaker.lower()], message))
    if turns[-1][0] != "assistant":
        raise ValueError(f"the last message must be the assistant's ({role_key} "
                         f"{' or '.join(repr(k) for k, v in roles.items() if v == 'assistant')})")
    prompt = [(role, _message_text(m, text_key, number)) for number, (role, m) in enumerate(turns[:-1], start=1)]
    if not prompt:
        raise ValueError("'messages' needs at least one message before the assistant's answer")
    answer = _message_text(turns[-1][1], text_key, len(turns), required=False)
    return Example(prompt=prompt, completion=answer, answers=[answer])


def _message_text(message: Mapping[str, Any], key: str, number: int, *, required: bool = True) -> str:
    """A message's text; OpenAI's content parts (``[{"type": "text", "text": …}, …]``) are joined by line
    breaks, as vLLM joins them for a text-only model's chat template, and any other part is refused."""
    parts = message.get(key)
    if not isinstance(parts, list):
        return field_text(message, key, required=required)
    texts = []
    for part in parts:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"a part of type '{kind}'" if kind else "a part that is not {\"type\": \"text\", \"text\": …}"
            raise ValueError(f"message {number} has {what} in its '{key}'; kbit trains on text: keep only the text "
                             "parts, or write the content as text")
        texts.append(part["text"])
    return "\n".join(texts)


def alpaca(row: Mapping[str, Any]) -> Example:
    """Alpaca rows: ``instruction``, an optional ``input`` (joined to it by a line break) and ``output``, with
    LLaMA-Factory's optional ``system`` text and ``history`` (earlier [instruction, answer] pairs)."""
    extra = field_text(row, "input", required=False) if "input" in row else ""
    system = field_text(row, "system", required=False) if "system" in row else ""
    turns = [("system", system)] if system else []
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in history):
        raise ValueError("'history' must be a list of [instruction, answer] pairs")
    for asked, answered in history:
        turns += [("user", as_text(asked, "history")), ("assistant", as_text(answered, "history"))]
    turns.append(("user", field_text(row, "instruction") + (f"\n{extra}" if extra else "")))
    answer = field_text(row, "output", required=False)
    return Example(prompt=turns, completion=answer, answers=[answer])


def columns(mapping: Mapping[str, str]) -> RowConverter:
    """Rows with named prompt/completion (and optional answer) columns."""
    def convert(row: Mapping[str, Any]) -> Example:
        completion = field_text(row, mapping["completion"], required=False)
        answer = field_text(row, mapping["answer"], required=False) if "answer" in mapping else completion
        return Example(prompt=[("user", field_text(row, mapping["prompt"]))], completion=completion, answers=[answer])

    return convert


FORMATS: dict[str, tuple[frozenset[str], RowConverter, str]] = {
    "messages": (frozenset({"messages"}), chat_messages, "generic"),
    "sharegpt": (frozenset({"conversations"}), sharegpt, "generic"),
    "alpaca": (frozenset({"instruction", "output"}), alpaca, "generic"),
    "openmath": (frozenset({"problem", "expected_answer"}), openmath, "openmath"),
    "squad": (frozenset({"context", "question", "answers"}), squad, "squad"),
    "prompt-completion": (frozenset({"prompt", "completion"}), columns({"prompt": "prompt", "completion": "completion"}), "generic"),
    "question-answer": (frozenset({"question", "answer"}), columns({"prompt": "question", "completion": "answer"}), "generic"),
}


def layout_of(column_names: list[str]) -> str | None:
    """The name of the first layout whose columns ``column_names`` hold (see ``FORMATS``), or None."""
    return next((name for name, (required, _, _) in FORMATS.items() if required <= set(column_names)), None)


def parse_column_mapping(text: str) -> dict[str, str]:
    """``"prompt=q,completion=a"`` → mapping; refuses unknown roles or a missing prompt/completion."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, sep, column = part.partition("=")
        if not sep or role.strip() not in ("prompt", "completion", "answer") or not column.strip():
            raise ConfigError(f"--columns entry '{part}' must be prompt=COL, completion=COL or answer=COL")
        mapping[role.strip()] = column.strip()
    if not {"prompt", "completion"} <= set(mapping):
        raise ConfigError("--columns must map both prompt and completion, e.g. --columns prompt=question,completion=answer")
    return mapping


def choose_format(column_names: list[str], mapping: Mapping[str, str] | None, source: str) -> tuple[RowConverter, str]:
    """The converter and task for a table with ``column_names`` (explicit ``mapping`` wins)."""
    if mapping:
        missing = [c for c in mapping.values() if c not in column_names]
        if missing:
            raise ConfigError(f"dataset {source} has no column(s) {', '.join(missing)}; its columns: {', '.join(column_names)}")
        return columns(mapping), "generic"
    matching = [(name, required, converter, task) for name, (required, converter, task) in FORMATS.items()
                if required <= set(column_names)]
    if matching:
        name, required, converter, task = matching[0]
        if len(matching) > 1:
            others = sorted({c for _, other, _, _ in matching[1:] for c in other} - required)
            logging.getLogger("kbit").warning(
                "dataset %s has the columns of several layouts: kbit reads it as %s (%s) and ignores %s; pass --columns "
                "prompt=COL,completion=COL to choose", source, name, ", ".join(sorted(required)), ", ".join(others))
        return converter, task
    raise ConfigError(
        f"dataset {source} has no known format (columns: {', '.join(column_names) or 'none'}); "
        "use --columns prompt=COL,completion=COL or a messages/conversations/alpaca/openmath/squad layout (docs/data.md)"
    )
