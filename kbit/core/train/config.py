"""``TrainConfig``: every setting of a training run, from defaults, a YAML file and CLI flags.

Precedence: defaults < YAML file < command-line flags. Unknown YAML keys are refused by name.
The resolved config is saved with the run (``kbit.json``), so a run can be repeated exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from kbit.core.data.split import held_out_size, recorded_held_out
from kbit.core.errors import ConfigError
from kbit.core.options import boolean, choice, integer, number

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")


@attrs.frozen
class TrainConfig:
    """A training run's settings. Defaults train the embedded default model on the arithmetic set."""

    model: str = "default"
    dataset: str = "arith"
    columns: str | None = None
    method: str = "qlora"
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    output: str | None = None
    name: str | None = attrs.field(default=None)
    max_steps: int = attrs.field(default=100, converter=integer(minimum=0))
    epochs: float = attrs.field(default=1.0, converter=number(minimum=0))
    batch_size: int | str = attrs.field(default=8, converter=integer(minimum=1, auto=True))
    grad_accum: int = attrs.field(default=1, converter=integer(minimum=1))
    lr: float = attrs.field(default=2e-3, converter=number(minimum=0))
    scheduler: str = attrs.field(default="linear", converter=choice(*SCHEDULERS))
    warmup_ratio: float = attrs.field(default=0.05, converter=number(minimum=0, below=1))
    max_length: int = attrs.field(default=256, converter=integer(minimum=8))
    seed: int = attrs.field(default=0, converter=integer(minimum=0, maximum=2**32 - 1))  # numpy's seed range
    packing: bool = attrs.field(default=False, converter=boolean)
    # Micro-batches as one row of concatenated examples: auto, true, false (see kbit.core.train.padding).
    padding_free: str = attrs.field(default="auto", converter=choice("auto", "true", "false"))
    logging_steps: int = attrs.field(default=10, converter=integer(minimum=1))
    save_steps: int = attrs.field(default=40, converter=integer(minimum=1))
    # Held-out loss during training every N steps; None: about four times a run, on logging steps
    # (and always at the last step); 0: never. On the first fit.EVAL_LOSS_ITEMS of the eval_limit held-out examples.
    eval_steps: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=0)))
    report_to: str = attrs.field(default="none", converter=choice(*REPORT_TO))
    # A count or a fraction of the dataset; None: the dataset's default (see kbit.core.data.split).
    held_out: int | float | None = attrs.field(default=None, converter=held_out_size)
    max_examples: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=2)))
    eval_limit: int = attrs.field(default=100, converter=integer(minimum=0))
    # None: until the end-of-turn token, capped by the training completions' length (kbit.core.evaluate.budget).
    max_new_tokens: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=1)))
    # The merge check: the merged model must reproduce the trained model's top-1 predictions this often.
    merge_min_agreement: float = attrs.field(default=0.99, converter=number(minimum=0, maximum=1))
    trust_remote_code: bool = attrs.field(default=False, converter=boolean)
    overwrite: bool = attrs.field(default=False, converter=boolean)

    @name.validator
    def _plain_name(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None:
            check_run_name(value)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


MAX_NAME_BYTES = 200  # a folder name (255 bytes on most filesystems) plus room for kbit's staging suffixes


def check_run_name(value: str) -> None:
    """A run name becomes a folder under runs/: a plain, printable name that cannot climb out of it."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a run name must not be empty or blank")
    if "/" in value or "\\" in value or value.startswith(".") or value != value.strip():
        raise ValueError(f"run name {value!r} must be a plain folder name (no '/', '\\', leading '.' or surrounding spaces)")
    if any(not ch.isprintable() for ch in value):
        raise ValueError(f"run name {value!r} must be a plain folder name (no newlines or control characters)")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"run name is {len(value.encode('utf-8'))} bytes long; use at most {MAX_NAME_BYTES}")


FIELDS = tuple(f.name for f in attrs.fields(TrainConfig))
LEGACY_KEYS = {"held_out_fraction": "held_out"}  # kbit 0.2 and earlier


def build_config(file: str | Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """Defaults, then the YAML ``file``, then ``overrides`` (flags; ``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(read_yaml(Path(file)))
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "options":
            if not isinstance(values.get("options", {}), Mapping):
                raise ConfigError("invalid value for 'options': expected a mapping of method options")
            values["options"] = {**values.get("options", {}), **value}
        else:
            values[key] = value
    try:
        return TrainConfig(**values)
    except (ValueError, TypeError) as exc:
        field = _failing_field(values)
        raise ConfigError(f"invalid value for '{field}': {exc}") from None


def _failing_field(values: Mapping[str, Any]) -> str:
    for key in values:
        try:
            TrainConfig(**{key: values[key]})
        except (ValueError, TypeError):
            return key
    return "config"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config; refuses a missing file, bad YAML and unknown keys, naming them."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); pass a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings, got {type(data).__name__}")
    for old, new in LEGACY_KEYS.items():
        if old in data:
            if new in data:
                raise ConfigError(f"config file {path}: give '{new}' only ('{old}' is its old name)")
            data[new] = data.pop(old)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], FIELDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"config file {path}: unknown key '{unknown[0]}'{hint}; valid keys: {', '.join(FIELDS)}")
    if "options" in data and not isinstance(data["options"], dict):
        raise ConfigError(f"config file {path}: 'options' must be a mapping of method options")
    return data


# Settings a resumed run never takes from its kbit.json: permission to run model code is given on
# each invocation, and the folder is the one being resumed.
NOT_RESUMED = ("trust_remote_code", "overwrite", "output")


def resume_config(run_dir: str | Path, overrides: Mapping[str, Any]) -> TrainConfig:
    """The settings of the run in ``run_dir`` (its kbit.json), with ``overrides`` (flags) on top."""
    from kbit.core.record import FILENAME, read_record

    recorded = read_record(Path(run_dir))
    if recorded is None:
        raise ConfigError(f"cannot resume: {run_dir} is not a kbit run (no {FILENAME})")
    where = Path(run_dir) / FILENAME
    if recorded.kind != "run":
        raise ConfigError(f"cannot resume: {where} describes a '{recorded.kind}' output, not a training run")
    saved = recorded.config
    if not saved:
        raise ConfigError(f"cannot resume: {where} has no 'config' object; it is incomplete or was edited")
    if "held_out_fraction" in saved:  # a kbit 0.2 run: read its split as it was made
        try:
            saved = {**{k: v for k, v in saved.items() if k != "held_out_fraction"}, "held_out": recorded_held_out(saved)}
        except ValueError as exc:
            raise ConfigError(f"cannot resume {run_dir}: invalid value for 'held_out_fraction' in {where}: {exc}") from None
    unknown = sorted(set(saved) - set(FIELDS))
    if unknown:
        raise ConfigError(f"cannot resume: {where} has unknown config key '{unknown[0]}'")
    base = {k: v for k, v in saved.items() if v is not None and k not in NOT_RESUMED}
    try:
        return build_config(None, {**base, **{k: v for k, v in overrides.items() if v is not None}, "output": str(run_dir)})
    except ConfigError as exc:
        raise ConfigError(f"cannot resume {run_dir}: {exc} (in {where} or the flags)") from None
