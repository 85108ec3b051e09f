"""The held-out split: how big it is (``--held-out N|FRACTION|FILE``) and which examples it takes.

A size is a count of examples (``50``) or a fraction of the dataset (``0.1``, ``10%``); ``None``
means the dataset's default: 100 questions for the generated arith set, 10% of a file or a hub
dataset without a split of its own, and the whole held-out split of one that has it (squad's
validation). A path instead names a file (or ``save_to_disk`` folder) of held-out examples, the way
axolotl's ``test_datasets`` and LLaMA-Factory's ``eval_dataset`` do: the dataset is then trained on whole.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kbit.core.errors import ConfigError

HeldOut = int | float | str | None
DEFAULT_FRACTION = 0.1
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_EXPECTED = ("expected a count of held-out examples (e.g. 50), a fraction between 0 and 1 (e.g. 0.1 or 10%) "
             f"or a file of them ({', '.join(FILE_SUFFIXES)})")

T = TypeVar("T")


def held_out_size(value: Any) -> HeldOut:
    """``value`` (a flag's text or a YAML value) as a count (int >= 1), a fraction (float in (0, 1)) or
    a path (str): text with a dataset file's suffix, or naming something that exists.

    Raises ``ValueError`` naming the value for anything else (0, negatives, 1.5, nan, words).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{_EXPECTED}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                percent = float(text[:-1])
                if not 0 < percent < 100:
                    raise ValueError
                return percent / 100
            if text.lstrip("+-").isdigit():
                value = int(text)
            else:  # written with a decimal point: only a fraction ("1.0" is neither a count nor < 1)
                value = float(text)
                if not 0 < value < 1:
                    raise ValueError
        except ValueError:
            if is_held_out_file(text):
                return text
            raise ValueError(f"{_EXPECTED}, got {value!r}") from None
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{_EXPECTED}, got {value}")
        return value
    if isinstance(value, float) and math.isfinite(value):
        if 0 < value < 1:
            return value
        if value >= 1 and value.is_integer():
            return int(value)  # YAML's 50.0
    raise ValueError(f"{_EXPECTED}, got {value!r}")


def is_held_out_file(text: str) -> bool:
    """Whether ``--held-out`` text names a file or folder of held-out examples rather than a size."""
    path = Path(text).expanduser()
    return bool(text) and (path.suffix.lower() in FILE_SUFFIXES or os.sep in text or path.exists())


def recorded_held_out(config: Mapping[str, Any]) -> HeldOut:
    """The held-out size a run recorded in its ``config``; kbit 0.1/0.2 runs recorded ``held_out_fraction``.

    Those runs split a file by that fraction but always held out 100 arith questions, so the old key
    is read as the same split: a fraction for files, the default for arith.
    """
    if "held_out" in config:
        return held_out_size(config["held_out"])
    legacy = config.get("held_out_fraction")
    if legacy is None or config.get("dataset") in (None, "", "arith"):
        return None
    return held_out_size(float(legacy))


def describe(size: HeldOut) -> str:
    if size is None:
        return "the dataset's default"
    if isinstance(size, str):
        return f"the file {size}"
    return f"{size:g} (fraction)" if isinstance(size, float) else f"{size} examples"


def split(examples: Sequence[T], size: HeldOut, seed: int, source: str) -> tuple[list[T], list[T]]:
    """A seeded random split into (train, held-out), each in the dataset's order.

    Refuses a split that leaves no training example or no held-out example.
    """
    total = len(examples)
    if total < 2:
        raise ConfigError(f"dataset {source} has {total} example; at least 2 are needed (train + held-out)")
    size = DEFAULT_FRACTION if size is None else size
    cut = size if isinstance(size, int) else max(1, int(round(total * size)))
    if cut >= total:
        raise ConfigError(f"--held-out {size:g} leaves no training examples: dataset {source} has {total}; "
                          "hold out fewer (a count below that, or a fraction such as 0.1)")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    held = set(order[:cut])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def arith_held_out(size: HeldOut, train_size: int, available: int, default: int = 100) -> int:
    """How many arith questions to hold out: a count as given, a fraction of all generated questions.

    Refuses a size for which the ``available`` distinct questions do not suffice beside the
    ``train_size`` training ones, naming the largest count and fraction that fit.
    """
    if size is None:
        count = default
    elif isinstance(size, int):
        count = size
    else:
        count = max(1, int(round(train_size * size / (1 - size))))
    most = available - train_size
    if count > most:
        largest_fraction = math.floor(most / available * 100) / 100
        raise ConfigError(
            f"--held-out {size if size is not None else count:g} asks for {count} held-out arith questions, but only "
            f"{available} distinct questions exist and {train_size} are for training; hold out at most {most} "
            f"(a count up to {most}, or a fraction up to {largest_fraction:g})"
        )
    return count


def take_held_out(examples: Sequence[T], size: HeldOut, source: str) -> list[T]:
    """A dataset's own held-out split, cut to ``size`` examples when it is a count (refused when it
    holds fewer: a smaller split than asked for would be scored without a word)."""
    if size is None:
        return list(examples)
    if isinstance(size, float):
        raise ConfigError(f"dataset {source} has its own held-out split ({len(examples)} examples); "
                          "--held-out takes a count there (e.g. --held-out 200), not a fraction")
    if size > len(examples):
        raise ConfigError(f"--held-out {size} asks for more examples than the held-out split of dataset {source} "
                          f"holds ({len(examples)}); hold out at most {len(examples)}")
    return list(examples[:size])
