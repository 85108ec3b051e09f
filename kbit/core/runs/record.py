"""One typed record of a run: ``kbit.json``, read and written here only, through ``RunRecord``.

A run's folder (kind "run") and a quantized model's folder (kind "quantized") each hold one
``kbit.json``. ``read_record`` validates it on the way in (a damaged or edited file is refused in
one line naming the field), turns the spec, the merge policy and each stage's part into their
records, and reads every schema kbit has written (version 1, kbit 0.1, included); ``write_record``
writes it back atomically in the current schema. The stages of a run update the record's fields;
nothing else reads or writes the file (``recorded_kind`` is the cheap look at what a folder is, for
the output rules).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from kbit.core.errors import ConfigError, Terminated
from kbit.core.runs.stamps import FILENAME, SCHEMA_VERSION, now
from kbit.core.contract.method_info import MergePolicy
from kbit.core.runs.folder import overwrite_json_in_place, write_json_atomic
from kbit.core.contract.spec import QuantizationSpec
from kbit.core.runs.sections import (BaseModelInfo, DatasetInfo, Export, Merge, Quantization, Scores, Section, Training,
                                     read_part, typed)

if TYPE_CHECKING:
    from kbit.core.train.config import TrainConfig

KINDS = ("run", "quantized")
STATUSES = ("running", "finished", "failed", "interrupted")


def _field(types: tuple[type, ...], default: Any = attrs.NOTHING, factory: Any = None) -> Any:
    if factory is not None:
        return attrs.field(factory=factory, validator=typed(*types))
    return attrs.field(default=default, validator=typed(*types))


def _part(cls: type[Section], always: bool = False) -> Any:
    """A typed part of the record: present (empty until its stage runs) when ``always``, else None until then."""
    if always:
        return attrs.field(factory=cls, converter=lambda data: cls() if data is None else cls.coerce(data))
    return attrs.field(default=None, converter=cls.coerce)


def _exports(entries: Any) -> list[Export]:
    if not isinstance(entries, list):
        raise ValueError(f"field 'exports' must be a list, got {type(entries).__name__}")
    return [Export.coerce(entry) for entry in entries]


# the typed parts, by field: their errors name the part ("train.steps")
PARTS = {"base_model": BaseModelInfo, "dataset": DatasetInfo, "train": Training, "merge": Merge, "quantize": Quantization,
         "metrics": Scores}


@attrs.define(kw_only=True)
class RunRecord:
    """Everything kbit records about a run, field by field (docs/training.md, "The run folder", says what each holds).

    ``spec`` and ``merge_policy`` are the spec's records; what each stage measured is a typed part
    (``kbit.core.runs.sections``): ``train`` (``Training``), ``merge`` (``Merge``, None until the merge
    stage), ``quantize`` (``Quantization``), ``exports`` (``Export`` each), ``metrics`` (``Scores``),
    ``base_model`` and ``dataset``. The rest are JSON values: ``config`` the run's validated settings,
    ``decisions``/``sizing``/``device``/``versions``/``artifacts`` maps by name. ``extra`` keeps fields
    this kbit does not know, written back as read.
    """

    kind: str = attrs.field(default="run", validator=[typed(str), attrs.validators.in_(KINDS)])
    status: str = attrs.field(default="running", validator=[typed(str), attrs.validators.in_(STATUSES)])
    error: str | None = _field((str, type(None)), None)
    name: str = _field((str,), "")
    created: str = _field((str,), "")
    updated: str | None = _field((str, type(None)), None)
    resumed: str | None = _field((str, type(None)), None)
    method: str = _field((str,), "")
    method_plugin: dict[str, Any] = _field((dict,), factory=dict)
    method_summary: str = _field((str,), "")
    method_options: dict[str, Any] = _field((dict,), factory=dict)
    spec: QuantizationSpec | None = attrs.field(default=None)
    merge_policy: MergePolicy | None = attrs.field(default=None)
    base_model: BaseModelInfo = _part(BaseModelInfo, always=True)
    dataset: DatasetInfo = _part(DatasetInfo, always=True)
    config: TrainConfig | None = attrs.field(default=None)  # a run's resolved settings, as validated on reading
    sizing: dict[str, Any] = _field((dict,), factory=dict)
    train: Training = _part(Training, always=True)
    device: dict[str, Any] = _field((dict,), factory=dict)
    decisions: dict[str, Any] = _field((dict,), factory=dict)
    trust_remote_code: bool = _field((bool,), False)
    versions: dict[str, Any] = _field((dict,), factory=dict)
    artifacts: dict[str, Any] = _field((dict,), factory=dict)
    loss_history: list[Any] = _field((list,), factory=list)
    merge: Merge | None = _part(Merge)
    quantize: Quantization | None = _part(Quantization)
    exports: list[Export] = attrs.field(factory=list, converter=_exports)
    metrics: Scores = _part(Scores, always=True)
    source_run: str | None = _field((str, type(None)), None)
    wall_time_s: float | None = _field((int, float, type(None)), None)
    peak_memory_bytes: int | None = _field((int, type(None)), None)
    extra: dict[str, Any] = attrs.field(factory=dict)

    def made_from(self) -> tuple[str | None, ...]:
        """What the run was made from, where recorded (its base model as loaded and as named, its dataset, held-out
        file and teacher): what no command that reads the run may write over."""
        config = self.config
        named = (config.model, config.dataset, config.held_out_file, config.teacher) if config is not None else ()
        return (self.base_model.path, *named)

    def has(self, artifact: str, folder: Path, marker: str) -> bool:
        """The artifact is recorded and its folder under ``folder`` holds ``marker`` (it was written whole)."""
        return bool(self.artifacts.get(artifact)) and (Path(folder) / artifact / marker).is_file()

    def unfinished(self, folder: Path | str = "RUN") -> str | None:
        """None for a finished run, else "is STATUS: its error's first line; what to do" (the end of a sentence;
        ``folder``: the run's path, for the command that resumes it)."""
        if self.status == "finished":
            return None
        first = self.error.splitlines()[0].strip() if self.error else ""
        # "KeyboardInterrupt: " says no more than "interrupted" does
        reason = f": {first}" if first and not first.startswith(("KeyboardInterrupt", "Terminated")) else ""
        remedy = (f"resume it with kbit train --resume {folder}" if self.status in ("running", "interrupted")
                  else "fix what stopped it and train it again")
        return f"is {self.status}{reason}; {remedy}"

    def why_no_merged(self, folder: Path, use: str) -> str:
        """Why run ``folder`` has no ``merged/`` model for ``use`` ("export", "quantize"): one line that ends in what to do."""
        merged = Path(folder) / "merged"
        if self.artifacts.get("merged"):
            return (f"run {folder} recorded a merged model, but {merged} is missing or damaged (no config.json in it); "
                    "restore it, or retrain the run")
        if (unfinished := self.unfinished(folder)) is not None:
            return f"run {folder} has no merged model to {use}: it {unfinished}"
        if self.merge_policy is not None and self.merge_policy.reason.startswith("merge_after_train=false"):
            return (f"run {folder} has no merged model to {use}: it trained with -o merge_after_train=false; "
                    "train it again without that option")
        if self.merge_policy is not None and self.merge_policy.action != "merge":
            return (f"run {folder} has no merged model to {use}: its method's merge policy keeps only the adapter; "
                    "train with a method that merges")
        return f"run {folder} has no merged model to {use} ({merged} is missing); retrain the run"

    def to_dict(self) -> dict[str, Any]:
        data = {a.name: getattr(self, a.name) for a in attrs.fields(RunRecord) if a.name != "extra"}
        data["spec"] = self.spec.to_dict() if self.spec is not None else None
        data["merge_policy"] = self.merge_policy.to_dict() if self.merge_policy is not None else None
        data["config"] = self.config.to_dict() if self.config is not None else None
        for name in PARTS:
            data[name] = data[name].to_dict() if data[name] is not None else None
        data["exports"] = [entry.to_dict() for entry in self.exports]
        return {"schema_version": SCHEMA_VERSION, **data, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = FILENAME) -> RunRecord:
        """A record from a ``kbit.json`` object of any schema kbit wrote; ConfigError names a bad field.

        A run's ``config`` is validated setting by setting as ``kbit train`` validates its flags, and
        held in its typed, current form, so every reader (resume, eval, export) gets checked values.
        """
        known = {a.name for a in attrs.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "schema_version"}
        try:
            if isinstance(values.get("spec"), Mapping):
                values["spec"] = QuantizationSpec.from_dict(values["spec"])
            elif values.get("spec") is not None:
                raise ValueError(f"field 'spec' must be an object, got {type(values['spec']).__name__}")
            policy = values.get("merge_policy")
            if isinstance(policy, Mapping):
                values["merge_policy"] = MergePolicy(**policy)
            elif policy is not None:
                raise ValueError(f"field 'merge_policy' must be an object, got {type(policy).__name__}")
            for name, part in PARTS.items():
                if values.get(name) is not None:
                    values[name] = read_part(name, part, values[name])
            for name in ("exports", "loss_history"):
                entries = values.get(name)
                if isinstance(entries, list) and not all(isinstance(e, Mapping) for e in entries):
                    raise ValueError(f"field '{name}' must be a list of objects")
            if isinstance(values.get("exports"), list):
                values["exports"] = [read_part(f"exports[{i}]", Export, e) for i, e in enumerate(values["exports"])]
            config = values.get("config")
            if config is not None and not isinstance(config, Mapping):
                raise ValueError(f"field 'config' must be an object, got {type(config).__name__}")
            values["config"] = _recorded_config(config) if values.get("kind", "run") == "run" and config else None
            return cls(**values, extra=extra)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}; the file was edited or damaged — restore it") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}; the file was edited or damaged — restore it") from None


def _recorded_config(config: Mapping[str, Any]) -> TrainConfig:
    """A run's settings, typed and validated as ``kbit train`` validates its flags (see ``recorded_config``)."""
    from kbit.core.train.config import recorded_config

    try:
        return recorded_config(config)
    except ConfigError as exc:
        raise ValueError(f"field 'config': {exc}") from None


def read_metadata(directory: Path) -> dict[str, Any] | None:
    """``directory/kbit.json`` as raw JSON, or None when there is none; ConfigError when it is corrupt or
    from a newer kbit. For the typed record use ``read_record``."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # not JSON or UTF-8, a 5000-digit number, nesting past the stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise ConfigError(f"{path} is corrupt ({reason}); restore it or rerun the step that wrote it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is corrupt (not a JSON object)")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ConfigError(f"{path} has no schema_version; it was not written by kbit")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path} has schema version {version}, newer than this kbit reads ({SCHEMA_VERSION}); upgrade kbit")
    return data


def recorded_kind(directory: Path) -> str | None:
    """The ``kind`` ``directory/kbit.json`` records ("run", "quantized"), "unknown" when the file cannot be
    read (it still marks the folder as kbit's), None when there is no such file. Never raises."""
    path = Path(directory) / FILENAME
    if not os.path.isfile(path):  # False, not an OSError, for a name too long to exist
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return "unknown"
    return str(data.get("kind") or "unknown") if isinstance(data, dict) else "unknown"


def record_digest(directory: Path) -> str:
    """A short digest of ``directory/kbit.json`` as written: it changes whenever the record does."""
    import hashlib

    return hashlib.sha256((Path(directory) / FILENAME).read_bytes()).hexdigest()[:16]


def read_record(directory: Path) -> RunRecord | None:
    """The record in ``directory`` (or the ``kbit.json`` file itself), or None when there is no ``kbit.json``;
    ConfigError when unreadable."""
    if Path(directory).name == FILENAME and Path(directory).is_file():
        directory = Path(directory).parent
    data = read_metadata(directory)
    return None if data is None else RunRecord.from_dict(data, str(Path(directory) / FILENAME))


def write_record(directory: Path, record: RunRecord) -> None:
    """Write ``record`` as ``directory/kbit.json`` atomically, stamping the update time."""
    record.updated = now()
    write_json_atomic(Path(directory) / FILENAME, record.to_dict())


def write_stopped(directory: Path, record: RunRecord, exc: BaseException, started: float) -> None:
    """Record why a run stopped: "interrupted" for Ctrl-C and signals, else "failed", with the error.

    On a full disk the record is written over the old one in place; a read-only disk keeps the old
    record (the error itself is what the user must see, so no write error is raised here).
    """
    interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
    record.status = "interrupted" if interrupted else "failed"
    record.error, record.wall_time_s = f"{type(exc).__name__}: {exc}", round(time.time() - started, 1)
    try:
        write_record(directory, record)
    except OSError:
        with contextlib.suppress(OSError):
            overwrite_json_in_place(Path(directory) / FILENAME, record.to_dict())
