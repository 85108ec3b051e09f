"""Load a dataset reference into ``TaskData``.

A reference is ``arith`` (the embedded default), ``openmath`` or ``squad`` (their hub datasets),
a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file (a ``.json`` file may also be the official
nested SQuAD v1.1/v2.0 document), or any hub dataset name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kbit.core.data import arithmetic
from kbit.core.data.examples import Example, TaskData, trained_prompts
from kbit.core.data.formats import (choose_format, is_squad_document, layout_of, mark_unanswerable, parse_column_mapping, squad,
                                    squad_rows)
from kbit.core.data.split import FILE_SUFFIXES, HeldOut, arith_held_out, split, take_held_out
from kbit.core.errors import ConfigError
from kbit.core.system.input_files import require_regular_file

log = logging.getLogger("kbit")

DEFAULT_DATASET = arithmetic.NAME
NAMED_HUB_DATASETS = {
    # name: (hub id, config, train split, held-out split or None to carve one out)
    "openmath": ("nvidia/OpenMathInstruct-2", None, "train_1M", None),
    "squad": ("rajpurkar/squad", None, "train", "validation"),
}
SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")  # what datasets' save_to_disk writes into its folder


def load_task_data(
    reference: str | None = None,
    *,
    columns: str | None = None,
    held_out: HeldOut = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Resolve ``reference`` and return normalised train and held-out examples.

    ``held_out`` is a count or a fraction (``kbit.core.data.split``; ``None``: the dataset's default),
    or the path of a file of held-out examples (then every dataset row is for training).
    Raises ``ConfigError`` for a missing file, a pipe or device instead of a file, a malformed row
    (with its line or row number: invalid JSON, NaN/Infinity, a CSV row that does not fit its
    header), an unknown format, missing columns, ``columns`` for the built-in arith set, an empty
    dataset, a held-out size that leaves nothing to train on or asks for more than exists, a held-out
    file for the built-in arith set or in another task's layout, or an unreachable hub dataset.
    """
    mapping = parse_column_mapping(columns) if columns else None
    if reference in (None, "", DEFAULT_DATASET, arithmetic.REPHRASED):
        builtin = reference or DEFAULT_DATASET
        if mapping:
            raise ConfigError(f"--columns applies to a dataset file or a hub dataset; the built-in '{builtin}' "
                              "dataset has its own question and answer fields: drop --columns or pass --dataset FILE")
        if isinstance(held_out, str):
            raise ConfigError(f"--held-out {held_out}: the built-in '{builtin}' dataset draws its own held-out questions; "
                              "pass --dataset FILE to train beside a held-out file, or --held-out N for more questions")
        train_size = min(max_examples or 2000, 2000)
        held_out_size = arith_held_out(held_out, train_size, arithmetic.distinct_questions())
        data = arithmetic.generate(train_size=train_size, held_out_size=held_out_size, seed=seed)
        return arithmetic.rephrased(data) if reference == arithmetic.REPHRASED else data
    held = None
    path = Path(reference).expanduser()
    if isinstance(held_out, str):
        held_path = Path(held_out).expanduser()
        if held_path.exists() and path.exists() and held_path.resolve() == path.resolve():
            raise ConfigError(f"--held-out {held_out} is the dataset file itself, whose every row trains; pass a count "
                              "or a fraction to hold out some of its rows, or a file of other items")
        held, held_out = (_read_local(held_path, "held-out file"), str(held_path)), None
    if _is_saved_dataset(path):
        return _build(path.name, str(path), _read_saved(path), held, mapping, held_out, max_examples, seed,
                      held_file=held is not None)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return _build(path.stem, str(path), _read_local(path, "dataset file"), held, mapping, held_out, max_examples, seed,
                      held_file=held is not None)
    hub_id, config, train_split, held_split = NAMED_HUB_DATASETS.get(reference, (reference, None, "train", None))
    train_rows = _read_hub(hub_id, config, train_split, max_examples)
    held_file = held is not None
    if not held_file and held_split:
        held = _read_hub(hub_id, config, held_split, None), f"hub:{hub_id} ({held_split})"
    name = reference if reference in NAMED_HUB_DATASETS else reference.split("/")[-1]
    return _build(name, f"hub:{hub_id}", train_rows, held, mapping, held_out, max_examples, seed, held_file)


def load_items(path: str, *, columns: str | None = None) -> TaskData:
    """Every row of the file (or saved dataset folder) ``path`` as an item to score and none to train on: a test
    file scored on its own. ``columns`` applies where the file has those columns (it may map a run's training file),
    else the file's own layout is read. Raises ``ConfigError`` as ``load_task_data`` does for the file, and for a
    file with no rows."""
    mapping = parse_column_mapping(columns) if columns else None
    file = Path(path).expanduser()
    rows = _read_local(file, "held-out file")
    if not rows:
        raise ConfigError(f"held-out file {path} is empty")
    converter, task = _held_out_format(sorted(rows[0].keys()), mapping, path)
    if converter is squad:
        mark_unanswerable(rows)
    return TaskData(name=file.stem, task=task, train=(), held_out=_convert(rows, converter, path, "held-out file"),
                    source=str(file))


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder ``datasets``' ``save_to_disk`` wrote."""
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS)


def _read_local(path: Path, what: str) -> list[Mapping[str, Any]]:
    """The rows of a local dataset file, or of a folder ``datasets``' ``save_to_disk`` wrote."""
    if _is_saved_dataset(path):
        return _read_saved(path)
    if path.is_dir():
        kind = "a model folder" if (path / "config.json").is_file() else "a folder"
        raise ConfigError(f"{what} {path} is {kind}, not data: pass a {'/'.join(FILE_SUFFIXES)} file, or a folder "
                          f"datasets' save_to_disk wrote ({' or '.join(SAVED_DATASET_MARKERS)} inside)")
    return _read_file(path, what)


LARGE_FILE_BYTES = 16 * 2**20  # a file this large takes seconds to read and check: say so before the wait


def _read_file(path: Path, what: str = "dataset file") -> list[Mapping[str, Any]]:
    require_regular_file(path, what)
    if (size := path.stat().st_size) >= LARGE_FILE_BYTES:
        log.info("reading %s (%.0f MB)", path, size / 2**20)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv") and _looks_utf16(path):  # NUL bytes are valid UTF-8: decoding passes
        raise not_utf8(path)
    if suffix == ".jsonl":
        # Parsed here rather than by `datasets` so a malformed row is reported with its line number.
        rows = []
        for number, line in enumerate(_text_lines(path), start=1):
            if not line.strip():
                continue
            try:
                row = parse_json(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number}: invalid JSON ({exc.msg}); fix or remove that line") from None
            except ValueError as exc:
                raise ConfigError(f"{path} line {number}: {exc}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(LineRow(row, line=number))
        return rows
    if suffix == ".json":
        try:
            data = parse_json(path.read_text(encoding="utf-8-sig"))  # a leading BOM (Windows editors) is not data
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if is_squad_document(data):
            return squad_rows(data, str(path))
        if isinstance(data, Mapping) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
            raise ConfigError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        return data
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix == ".parquet":
        import datasets

        try:
            with _silenced("datasets"):  # it logs the failure too; kbit reports it once, in one line
                table = datasets.load_dataset(suffix[1:], data_files=str(path), split="train")
        except Exception as exc:
            raise ConfigError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        return list(table)
    raise ConfigError(f"{what} {path} has an unknown type; use one of {', '.join(FILE_SUFFIXES)}")


MAX_INT_DIGITS = 4300
"""Python's own limit for int(text); a longer integer is refused with a line naming the fix."""


class _NotJSON(ValueError):
    """A value Python's json module would accept but is not JSON or cannot be held."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value; write the number as a string (\"{name}\") or leave the row out")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _NotJSON(f"an integer of {len(text.lstrip('-'))} digits is longer than kbit reads "
                       f"({MAX_INT_DIGITS}); write it as a string")
    return int(text)


class JSONNumber(float):
    """A JSON number with the text it was written as: a field holding one trains as that text ("1e20", "1.50"),
    not as Python would print the float ("1e+20", "1.5")."""

    text: str

    def __new__(cls, text: str) -> JSONNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _finite_float(text: str) -> float:
    value = JSONNumber(text)
    if not math.isfinite(value):  # 1e999: valid JSON that Python reads as infinity
        raise _NotJSON(f"the number {text[:20]} is too large for a float; write it as a string")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):  # json keeps the last one, silently
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _NotJSON(f"key '{twice}' is given twice in one object; keep the one you mean")
    return result


def parse_json(text: str) -> Any:
    """``json.loads`` for dataset files, strict where Python's json is lenient or fragile.

    Raises ``json.JSONDecodeError`` for malformed JSON, and a ``ValueError`` that names the fix for
    ``NaN``/``Infinity`` (not JSON: they would train as the text "nan"), a number too large for a
    float (read as infinity), an integer over ``MAX_INT_DIGITS`` digits, a key given twice in one object,
    and nesting deeper than Python's recursion limit.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _NotJSON("its JSON is nested too deeply to read; flatten it") from None


CSV_FIELD_LIMIT = 1 << 26  # characters in one CSV field: long contexts fit (Python's default is 131,072)


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    """A CSV file's rows as dicts keyed by the header row, every row checked against it.

    Read here rather than by ``datasets`` (pandas), which takes a row with one field too many as an
    index and shifts every column: here such a row is refused with its line number. Empty cells
    read as null, as they did through ``datasets``.
    """
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, strict=True)
            header = next(reader, None)
            if header is None:
                return []
            names = [name.strip() or f"Unnamed: {i}" for i, name in enumerate(header)]
            seen: set[str] = set()
            twice = sorted({n for n in names if n in seen or seen.add(n)})
            if twice:
                raise ConfigError(f"{path} line 1: column {twice[0]} appears more than once in the header; rename it")
            rows = []
            first = reader.line_num + 1  # a quoted cell may span lines: a row starts after the previous one ends
            for fields in reader:
                if fields and len(fields) != len(names):
                    raise ConfigError(f"{path} line {reader.line_num}: {len(fields)} fields but the header has "
                                      f"{len(names)} ({', '.join(names)}); quote fields that hold commas")
                if fields:  # else a blank line
                    rows.append(LineRow({name: value if value != "" else None for name, value in zip(names, fields)},
                                        line=first))
                first = reader.line_num + 1
            if not rows:
                raise ConfigError(f"dataset {path} has a header ({', '.join(names)[:80]}) but no rows; add rows below it")
            return rows
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except csv.Error as exc:
        raise ConfigError(f"{path}: invalid CSV ({exc}); check its quoting") from None


@contextlib.contextmanager
def _silenced(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _looks_utf16(path: Path) -> bool:
    """Whether a text file's start is NUL bytes one in four or more: UTF-16 (of mostly ASCII text), not UTF-8."""
    with open(path, "rb") as handle:
        start = handle.read(4096)
    return start.count(0) > len(start) // 4


def not_utf8(path: Path) -> ConfigError:
    """The refusal of a text file that is not UTF-8: where (its line), what it looks like, and the fix."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) and _decodes(data, "utf-16"):
        what = "is not UTF-8 text: it starts with a UTF-16 byte order mark"
    elif _looks_utf16(path):
        what = "is not UTF-8 text: it looks like UTF-16 without a byte order mark (every other byte is 0)"
    else:
        try:
            data.decode("utf-8")
            where = ""
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            where = f" at line {line}"
        what = f"is not UTF-8 text{where} (perhaps Latin-1 or Windows-1252)"
    return ConfigError(f"{path} {what}; re-save it as UTF-8 (an editor's 'Save with encoding', or iconv -t UTF-8)")


def _read_saved(path: Path) -> list[Mapping[str, Any]]:
    """The rows of a folder ``datasets``' ``save_to_disk`` wrote: a Dataset, or a DatasetDict's ``train`` split
    (held-out items are carved out of it, as from a hub dataset)."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:  # a damaged or partial folder: one line with the fix
        raise ConfigError(f"dataset folder {path} cannot be read back with datasets' load_from_disk "
                          f"({type(exc).__name__}); save it again, or pass a .jsonl/.json/.csv/.parquet file") from None
    if isinstance(saved, datasets.DatasetDict):
        if "train" not in saved:
            raise ConfigError(f"dataset folder {path} holds the splits {', '.join(saved)}, none named 'train'; save the "
                              "split to train on as its own folder or file")
        saved = saved["train"]
    return saved.to_list()


def _read_hub(hub_id: str, config: str | None, split: str, limit: int | None) -> list[Mapping[str, Any]]:
    import datasets

    _check_hub_reachable(hub_id)
    try:
        if limit:
            stream = datasets.load_dataset(hub_id, config, split=split, streaming=True)
            return list(stream.take(limit))
        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as exc:  # offline, unknown name, missing split: one line with the fix
        raise ConfigError(
            f"cannot load dataset '{hub_id}' split '{split}' from the hub ({type(exc).__name__}); "
            "check the name and network, or pass a local .jsonl/.json/.csv/.parquet file"
        ) from None


def _check_hub_reachable(hub_id: str) -> None:
    """Refuse at once where the hub cannot be reached: ``datasets`` would retry for half a minute, printing each
    retry, before failing. Offline mode (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``) fails fast by itself."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"cannot load dataset '{hub_id}': the hub ({endpoint.hostname}) cannot be reached "
                          f"({exc.strerror or type(exc).__name__}); check the network, or pass a local "
                          ".jsonl/.json/.csv/.parquet file") from None


class LineRow(dict):
    """A row of a text file with the line it starts on, so a row kbit refuses is named by its line."""

    def __init__(self, fields: Mapping[str, Any], *, line: int) -> None:
        super().__init__(fields)
        self.line = line


def _convert(rows: Sequence[Mapping[str, Any]], converter, source: str, what: str = "dataset") -> list[Example]:
    """Every row as an ``Example``; rows whose completion is empty or null are dropped (with a warning),
    since they teach nothing, and a dataset where every completion is empty is refused."""
    examples = []
    for number, row in enumerate(rows, start=1):
        try:
            example = converter(row)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            other, first = layout_of(list(row)), layout_of(list(rows[0]))
            if isinstance(exc, KeyError) and other not in (None, first):
                detail += f": the row is in the {other} layout, the file's first row in the {first} one; use one layout per file"
            where = f"line {row.line}" if isinstance(row, LineRow) else f"row {number}"
            raise ConfigError(f"{source} {where}: {detail}") from None
        if example.completion.strip():
            examples.append(example)
    dropped = len(rows) - len(examples)
    if rows and not examples:
        raise ConfigError(f"{what} {source}: every one of its {len(rows)} rows has an empty or null completion; "
                          "check the answer column (or --columns completion=COL)")
    if dropped:
        log.warning("%s %s: dropped %d of %d rows with an empty or null completion", what, source, dropped, len(rows))
    return examples


def _build(name, source, rows, held, mapping, held_out, max_examples, seed, held_file=False) -> TaskData:
    """Train and held-out examples of ``rows``: the held-out ones from ``held`` (rows, source) when given
    (a split of the dataset's own or a held-out file; all of it, or ``held_out`` of it when a count),
    else split off ``rows``. Held-out items that repeat a training prompt are warned of, except those of
    a held-out file (``held_file``): whose training rows they repeat is for the caller to say."""
    if not rows:
        raise ConfigError(f"dataset {source} is empty")
    converter, task = choose_format(sorted(rows[0].keys()), mapping, source)
    held_rows, held_source = held if held is not None else (None, "")
    if held_rows is not None:
        if not held_rows:
            raise ConfigError(f"held-out file {held_source} is empty")
        held_converter, held_task = _held_out_format(sorted(held_rows[0].keys()), mapping, held_source)
        if held_task != task:
            raise ConfigError(f"{held_source} is scored as the {held_task} task and dataset {source} as the {task} one, "
                              "differently; write the held-out items in the dataset's layout")
    if converter is squad:
        mark_unanswerable([*rows, *(held_rows or [])])
    if max_examples:
        rows = rows[:max_examples]
    examples = _convert(rows, converter, source)
    if held_rows is not None:
        train, held_examples = examples, take_held_out(_convert(held_rows, held_converter, held_source, "held-out file"), held_out,
                                                       held_source)
    else:
        train, held_examples = split(examples, held_out, seed, source)
    if not held_file and (shared := trained_prompts(train, held_examples)):
        log.warning("%d of %d held-out items of %s ask a prompt a training example asks too (the same prompt in "
                    "several rows): their scores measure recall, not what the model learned; keep each prompt in one "
                    "row",
                    shared, len(held_examples), source)
    return TaskData(name=name, task=task, train=train, held_out=held_examples, source=source)


def _held_out_format(column_names: list[str], mapping: dict[str, str] | None, source: str) -> tuple[Any, str]:
    """A held-out file's converter and task: ``--columns`` where the file has those columns (it maps the dataset's),
    else the file's own layout."""
    if mapping and not set(mapping.values()) <= set(column_names):
        mapping = None
    try:
        return choose_format(column_names, mapping, source)
    except ConfigError:
        raise ConfigError(f"held-out file {source} has no known format (columns: {', '.join(column_names) or 'none'}); "
                          "write its items in one of kbit's layouts (prompt/completion, question/answer, messages, "
                          "conversations, alpaca; docs/data.md), or with the columns --columns maps in the dataset") from None
