"""The normalised example every format is turned into, and a train/held-out pair of them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import attrs

from kbit.core.data.split import HeldOut
from kbit.core.errors import ConfigError

TASKS = ("arithmetic", "openmath", "squad", "generic")
"""How answers are scored: numeric exact match (arithmetic, openmath), EM + token F1 (squad), loss only."""


@attrs.frozen
class Example:
    """One supervised example: chat ``prompt`` messages, the target ``completion``, gold ``answers``."""

    prompt: tuple[tuple[str, str], ...] = attrs.field(converter=lambda m: tuple((r, c) for r, c in m))
    completion: str
    answers: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.prompt]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt_messages(), "completion": self.completion, "answers": list(self.answers)}


@attrs.frozen
class TaskData:
    """A named dataset with its task type, training examples and held-out examples."""

    name: str
    task: str = attrs.field(validator=attrs.validators.in_(TASKS))
    train: tuple[Example, ...] = attrs.field(converter=tuple)
    held_out: tuple[Example, ...] = attrs.field(converter=tuple)
    source: str = ""

    def fingerprint(self) -> str:
        """sha256 over every example, train then held-out: equal data gives an equal fingerprint."""
        digest = hashlib.sha256()
        for example in (*self.train, "--held-out--", *self.held_out):
            payload = example if isinstance(example, str) else json.dumps(example.to_dict(), sort_keys=True)
            digest.update(payload.encode())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        return {"name": self.name, "task": self.task, "source": self.source, "train_examples": len(self.train),
                "held_out_examples": len(self.held_out), "fingerprint": self.fingerprint(),
                "held_out_trained_prompts": trained_prompts(self.train, self.held_out)}


def every_assistant_turn(example: Example) -> list[Example]:
    """``example`` as one example per assistant answer of its conversation: each earlier assistant turn of
    its prompt becomes a completion, with the turns before it as its prompt, then ``example`` itself. A
    conversation that opens with the assistant keeps that turn as context only (it has nothing to answer)."""
    earlier = [Example(prompt=example.prompt[:i], completion=text, answers=[text])
               for i, (role, text) in enumerate(example.prompt) if role == "assistant" and i > 0 and text.strip()]
    return [*earlier, example]


def trained_prompts(train: Iterable[Example], items: Iterable[Example]) -> int:
    """How many of ``items`` ask a prompt that one of the ``train`` examples asks too (duplicate rows,
    or held-out items taken from a file the model trained on): their scores measure recall."""
    seen = {example.prompt for example in train}
    return sum(1 for example in items if example.prompt in seen)


def check_recorded_file(dataset: str, run: str, alternative: str = "", held_out: HeldOut = None) -> None:
    """Refuse a run's recorded dataset file, or held-out file (``held_out`` when a path), that is gone (moved
    or deleted since the run), naming the fix; a run records a local file by its absolute path, and a built-in
    or hub name is never one."""
    if Path(dataset).is_absolute() and not Path(dataset).exists():
        raise ConfigError(f"run {run} trained on {dataset}, which is no longer there (moved or deleted); put the file "
                          f"back at that path, or a link to it, so its held-out split can be rebuilt{alternative}")
    if isinstance(held_out, str) and Path(held_out).is_absolute() and not Path(held_out).exists():
        raise ConfigError(f"run {run} held out the items of {held_out}, which is no longer there (moved or deleted); "
                          f"put the file back at that path, or a link to it{alternative}")


def check_trained_on(data: TaskData, recorded: str | None, run: str, alternative: str = "",
                     held_out: HeldOut = None) -> TaskData:
    """``data``, rebuilt from a run's recorded settings, when it is the data the run trained beside
    (its ``recorded`` fingerprint; a record without one is not checked).

    Raises ConfigError otherwise, ending with ``alternative`` (another way out, for the command's
    user): the file changed since, or a relative path recorded by an older kbit found another file
    from this folder. Scoring that data would score items the run trained on.
    """
    if recorded and (actual := data.fingerprint()) != recorded:
        if isinstance(held_out, str):
            files, changed = f"dataset {data.source} with the held-out file {held_out}", "one of the two files"
        else:
            files, changed = f"dataset {data.source}", "the file"
        raise ConfigError(f"{files} is not the data run {run} trained beside (fingerprint {actual}, "
                          f"the run recorded {recorded}): {changed} changed since, or its relative path found another "
                          f"file from this folder; restore the file the run trained on or run from its folder{alternative}")
    return data
