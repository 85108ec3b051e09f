"""``TrainConfig``: every setting of a training run, from defaults, a YAML file and CLI flags.

Precedence: defaults < YAML file < command-line flags. Unknown YAML keys are refused by name.
The resolved config is saved with the run (``kbit.json``), so a run can be repeated exactly.
Every value is typed and validated by ``TrainConfig`` itself, whether it comes from a YAML file,
a flag or a run's kbit.json (``recorded_config``); ``resume_config`` keeps what a run trains as recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import attrs

from kbit.core.data.split import held_out_size, recorded_held_out
from kbit.core.errors import ConfigError
from kbit.core.contract.options import boolean, choice, integer, number

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
# The largest count a setting takes (steps, lengths, sizes): an int32, which every library below takes,
# and beyond any run that could finish. Bigger numbers are typos or probes, refused in one line.
MAX_COUNT = 2**31 - 1


def text(raw: Any) -> str:
    """A setting that names something (model, dataset, method, path, column mapping): non-blank text
    only, so a YAML number, list, mapping, date or null is refused rather than passed on."""
    if not isinstance(raw, str):
        shown = "" if isinstance(raw, (list, dict, tuple, set)) else f" {raw!r:.40}"
        raise ValueError(f"expected text, got {type(raw).__name__}{shown}")
    if not raw.strip():
        raise ValueError("must not be empty or blank")
    return raw


def column_mapping(raw: Any) -> str:
    """``--columns`` text, or in YAML a mapping (``columns: {prompt: q, completion: a}``) written as that text."""
    if isinstance(raw, Mapping):
        return ",".join(f"{role}={column}" for role, column in raw.items())
    return text(raw)


def method_options(raw: Any) -> dict[str, Any]:
    """Method options as ``name: value`` (values are parsed by the method's own option schema)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a mapping of method options (name: value), got {type(raw).__name__}")
    named = [k for k in raw if not isinstance(k, str)]
    if named:
        raise ValueError(f"option names are text, got {type(named[0]).__name__} {named[0]!r:.40}")
    return dict(raw)


DEFAULT_LR = 2e-3


@attrs.frozen
class TrainConfig:
    """A training run's settings. Defaults train the embedded default model on the arithmetic set."""

    model: str = attrs.field(default="default", converter=text)
    dataset: str = attrs.field(default="arith", converter=text)
    columns: str | None = attrs.field(default=None, converter=attrs.converters.optional(column_mapping))
    method: str = attrs.field(default="qlora", converter=text)
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=method_options)
    output: str | None = attrs.field(default=None, converter=attrs.converters.optional(text))
    name: str | None = attrs.field(default=None, converter=attrs.converters.optional(text))
    max_steps: int = attrs.field(default=100, converter=integer(minimum=0, maximum=MAX_COUNT))
    epochs: float = attrs.field(default=1.0, converter=number(minimum=0, maximum=MAX_COUNT))
    batch_size: int | str = attrs.field(default=8, converter=integer(minimum=1, maximum=MAX_COUNT, auto=True))
    # Micro-batches per optimizer step; at most what an epoch of the training set fills (checked in plan_run).
    grad_accum: int = attrs.field(default=1, converter=integer(minimum=1, maximum=MAX_COUNT))
    # None: the method's default (``spec.training.learning_rate``), else DEFAULT_LR; plan_run records the value used.
    lr: float | None = attrs.field(default=None, converter=attrs.converters.optional(number(minimum=0)))
    scheduler: str = attrs.field(default="linear", converter=choice(*SCHEDULERS))
    # A transformers optimizer name (``paged_adamw_8bit``, QLoRA's, …); None: transformers' default. Checked in plan_run,
    # where transformers is loaded anyway.
    optim: str | None = attrs.field(default=None, converter=attrs.converters.optional(lambda raw: text(raw).strip().lower()))
    weight_decay: float = attrs.field(default=0.0, converter=number(minimum=0))
    max_grad_norm: float = attrs.field(default=1.0, converter=number(minimum=0))  # 0: gradients are not clipped
    warmup_ratio: float = attrs.field(default=0.05, converter=number(minimum=0, below=1))
    # Which assistant answers of a conversation train: the last (the one scored), or every one (kbit.core.data.examples).
    turns: str = attrs.field(default="last", converter=choice("last", "all"))
    max_length: int = attrs.field(default=256, converter=integer(minimum=8, maximum=MAX_COUNT))
    seed: int = attrs.field(default=0, converter=integer(minimum=0, maximum=2**32 - 1))  # numpy's seed range
    packing: bool = attrs.field(default=False, converter=boolean)
    # Micro-batches as one row of concatenated examples: auto, true, false (see kbit.core.train.padding).
    padding_free: str = attrs.field(default="auto", converter=choice("auto", "true", "false"))
    logging_steps: int = attrs.field(default=10, converter=integer(minimum=1, maximum=MAX_COUNT))
    save_steps: int = attrs.field(default=40, converter=integer(minimum=1, maximum=MAX_COUNT))
    # Held-out loss during training every N steps; None: about four times a run, on logging steps
    # (and always at the last step); 0: never. On the first fit.EVAL_LOSS_ITEMS of the eval_limit held-out examples.
    eval_steps: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=0, maximum=MAX_COUNT)))
    report_to: str = attrs.field(default="none", converter=choice(*REPORT_TO))
    # A count or a fraction of the dataset, or a file of held-out examples; None: the dataset's default
    # (see kbit.core.data.split).
    held_out: int | float | str | None = attrs.field(default=None, converter=held_out_size)
    max_examples: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=2, maximum=MAX_COUNT)))
    eval_limit: int = attrs.field(default=100, converter=integer(minimum=0, maximum=MAX_COUNT))
    # None: until the end-of-turn token, capped by the training completions' length (kbit.core.measure.budget).
    max_new_tokens: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=1, maximum=MAX_COUNT)))
    # The merge check: the merged model must reproduce the trained model's top-1 predictions this often.
    merge_min_agreement: float = attrs.field(default=0.99, converter=number(minimum=0, maximum=1))
    # ... and its logits may differ from the trained model's by at most this share of the adapter's own
    # effect; None: by the precision of the weights compared (kbit.core.model.merge.merge_tolerance).
    merge_tolerance: float | None = attrs.field(default=None, converter=attrs.converters.optional(number(minimum=0)))
    # A finished run on the same data whose merged model's answer distributions are a second target (kbit.core.train.teacher).
    teacher: str | None = attrs.field(default=None, converter=attrs.converters.optional(text))
    trust_remote_code: bool = attrs.field(default=False, converter=boolean)
    overwrite: bool = attrs.field(default=False, converter=boolean)

    @name.validator
    def _plain_name(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None:
            check_run_name(value)

    def __attrs_post_init__(self) -> None:
        # max_steps 0 hands the budget to epochs: both 0 would "train" a run of no step at all
        if self.max_steps == 0 and self.epochs == 0:
            raise ValueError("max_steps 0 means 'train for epochs', and epochs is 0: the run would train no step; "
                             "give --max-steps N (N >= 1) or --epochs above 0")

    @property
    def held_out_file(self) -> str | None:
        """The file of held-out examples ``held_out`` names, if it names one (not a count or a fraction)."""
        return self.held_out if isinstance(self.held_out, str) else None

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
    # what Windows refuses in a file name; '<' and '>' would also be HTML in the model cards and reports
    if reserved := sorted(set(value) & set('<>:"|?*')):
        raise ValueError(f"run name {value!r} holds {' '.join(reserved)}, which some file systems refuse in a folder "
                         "name; leave them out")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"run name is {len(value.encode('utf-8'))} bytes long; use at most {MAX_NAME_BYTES}")


FIELDS = tuple(f.name for f in attrs.fields(TrainConfig))
LEGACY_KEYS = {"held_out_fraction": "held_out"}  # kbit 0.2 and earlier
# Settings of axolotl, LLaMA-Factory and the Hugging Face Trainer, and where kbit takes them: named in the error
# for an unknown key, not read silently, as their values do not always mean the same (a list of datasets, say).
FOREIGN_KEYS = {
    "base_model": "model", "model_name_or_path": "model", "datasets": "dataset (one)", "dataset_path": "dataset",
    "micro_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "learning_rate": "lr", "num_epochs": "epochs",
    "num_train_epochs": "epochs", "sequence_len": "max_length", "cutoff_len": "max_length",
    "max_seq_length": "max_length", "output_dir": "output", "lr_scheduler": "scheduler",
    "lr_scheduler_type": "scheduler", "optimizer": "optim", "mask_history": "turns (mask_history: true is turns: last)",
    "roles_to_train": "turns (roles_to_train: [assistant] is turns: all)", "r": "options: {r: …}",
    "lora_dropout_p": "options: {lora_dropout: …}", "sample_packing": "packing", "val_set_size": "held_out",
    "test_datasets": "held_out (one file)", "eval_dataset": "held_out (one file)", "eval_file": "held_out",
    "adapter": "method", "finetuning_type": "method", "load_in_4bit": "method: qlora", "load_in_8bit": "method: bnb-int8",
    "quantization_bit": "method", "lora_r": "options: {r: …}", "lora_rank": "options: {r: …}",
    "lora_alpha": "options: {lora_alpha: …}", "lora_dropout": "options: {lora_dropout: …}",
    "lora_target_modules": "options: {target_modules: …}", "lora_target": "options: {target_modules: …}",
    "lora_target_linear": "options: {target_modules: all-linear}", "peft_use_dora": "options: {peft_type: dora}",
    "use_dora": "options: {peft_type: dora}", "gradient_checkpointing": "options: {gradient_checkpointing: …}",
    "use_rslora": "options: {use_rslora: true}", "peft_use_rslora": "options: {use_rslora: true}",
}


def build_config(file: str | Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """Defaults, then the YAML ``file``, then ``overrides`` (flags; ``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if file is not None:
        values.update(read_yaml(Path(file)))
        method = str(overrides.get("method") or "").strip().lower()
        if _is_run(Path(file)) and method and method != str(values.get("method", "")).lower() and values.get("options"):
            # a run repeated with another method: its method's options need not exist in the new one
            logging.getLogger("kbit").warning("the options of %s (%s) are its method %s's: --method %s starts from its "
                                              "own defaults", file, ", ".join(values.pop("options")), values.get("method"),
                                              method)
    from_file = set(values)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "options":
            if not isinstance(values.get("options", {}), Mapping) or not isinstance(value, Mapping):
                raise ConfigError("invalid value for 'options': expected a mapping of method options")
            values["options"] = {**values.get("options", {}), **value}
        else:
            values[key] = value
            from_file.discard(key)
    if file is not None and _is_run(Path(file)):
        _check_run_files(file, {key: values.get(key) for key in ("dataset", "held_out") if key in from_file})
    if isinstance(values.get("dataset"), list):
        raise ConfigError(f"{f'config file {file}: ' if 'dataset' in from_file else ''}'dataset' is a list; kbit reads one "
                          "dataset: join the files into one (e.g. cat a.jsonl b.jsonl > all.jsonl)")
    try:
        return TrainConfig(**values)
    except (ValueError, TypeError) as exc:
        field = _failing_field(values)
        where = f"config file {file}: " if field in from_file else ""
        shown = f", not {values[field]!r:.60}" if field in values and " got " not in str(exc) else ""
        raise ConfigError(f"{where}invalid value for '{field}': {exc}{shown}" if field else f"invalid settings: {exc}") from None


def _check_run_files(run: str | Path, recorded: Mapping[str, Any]) -> None:
    """Refuse a repeated run whose recorded data file (``dataset``, a ``held_out`` file) is gone, naming the flag
    that repeats its settings on another file."""
    for key, value in recorded.items():
        if isinstance(value, str) and Path(value).is_absolute() and not Path(value).exists():
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"run {run} read its {key.replace('_', '-')} from {value}, which is no longer there (moved "
                              f"or deleted); put the file back, or pass {flag} FILE to repeat its settings on another file")


def _with_machine_choices(settings: dict[str, Any], decisions: Any, path: Path) -> dict[str, Any]:
    """A run's settings with the compute dtype its ``auto`` chose (the one choice made from the machine, by a timing
    probe, that changes the numbers trained), so that repeating the run repeats it exactly on another machine too."""
    chosen = decisions.get("compute_dtype") if isinstance(decisions, Mapping) else None
    options = settings.get("options") if isinstance(settings.get("options"), Mapping) else {}
    if not isinstance(chosen, Mapping) or chosen.get("requested") != "auto" or "compute_dtype" in options \
            or not isinstance(chosen.get("value"), str):
        return settings
    logging.getLogger("kbit").info("repeating the compute dtype %s's auto chose, %s (-o compute_dtype=auto decides "
                                   "again for this machine)", path.parent.name, chosen["value"])
    return {**settings, "options": {**options, "compute_dtype": chosen["value"]}}


def _is_run(path: Path) -> bool:
    """Whether ``path`` names a run's record as a config (its folder or its ``kbit.json``)."""
    return (path.is_dir() and (path / "kbit.json").is_file()) or (path.name == "kbit.json" and path.is_file())


def located(config: TrainConfig) -> TrainConfig:
    """``config`` with its model, dataset, held-out file and teacher as absolute paths where they name local ones, so
    that the run's record finds them again from any folder (eval, export, quantize, --resume). The
    built-in names (the default model, the arith sets) stay names, as the loaders read them before any path."""
    from kbit.core.data.arithmetic import NAME as DEFAULT_DATASET, REPHRASED
    from kbit.core.model.sources import DEFAULT_MODEL

    def absolute(reference: str, builtin: tuple[str, ...]) -> str:
        path = Path(reference).expanduser()
        return str(path.resolve()) if reference not in builtin and path.exists() else reference

    return attrs.evolve(config, model=absolute(config.model, (DEFAULT_MODEL,)),
                        dataset=absolute(config.dataset, (DEFAULT_DATASET, REPHRASED)),
                        held_out=absolute(config.held_out_file, ()) if config.held_out_file else config.held_out,
                        teacher=None if config.teacher is None else absolute(config.teacher, ()))


def _failing_field(values: Mapping[str, Any]) -> str | None:
    """The setting that is invalid on its own; None when only a combination of settings is."""
    for key in values:
        try:
            TrainConfig(**{key: values[key]})
        except (ValueError, TypeError):
            return key
    return None


def _unique_keys_loader() -> Any:
    """PyYAML's safe loader refusing a key given twice in one mapping (it keeps the last silently; YAML 1.2 forbids it)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, Hashable) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeys


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML config; refuses a missing file, bad YAML and unknown keys, naming them."""
    import yaml

    from kbit.core.system.input_files import require_regular_file

    if path.is_dir() and (path / "kbit.json").is_file():  # a run folder: its recorded settings
        path = path / "kbit.json"
    require_regular_file(path, "config file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_keys_loader())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}); pass a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting deeper than Python's stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise ConfigError(f"config file {path}: invalid YAML ({reason}); write the settings as plain key: value lines") from None
    if data is None or data == {}:  # empty or comments only: a run of every default is not what the file asked for
        raise ConfigError(f"config file {path} holds no settings (it is empty or only comments); write key: value "
                          "lines, or drop --config to train with the defaults")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings, got {type(data).__name__}")
    if _too_big(data, MAX_YAML_VALUES):
        raise ConfigError(f"config file {path} holds more than {MAX_YAML_VALUES} values (YAML aliases expanding "
                          "into each other?); write the settings as plain key: value lines")
    if data.get("kind") == "run" and "schema_version" in data and isinstance(data.get("config"), dict):
        # a run's kbit.json (JSON is YAML): train again with its settings, into a new --output; the permission to
        # run model code is not a setting a record passes on (NOT_RESUMED)
        data = _with_machine_choices({k: v for k, v in data["config"].items() if k not in NOT_RESUMED
                                      and v is not None}, data.get("decisions"), path)
    for key, (flag, permission) in COMMAND_LINE_ONLY.items():
        if data.get(key) not in (False, None, "false", "False", "no", 0):
            raise ConfigError(f"config file {path} sets {key}: {permission} is taken from {flag} on the command line "
                              "only (a config file may come from anyone); remove the key and pass the flag")
        data.pop(key, None)
    for old, new in LEGACY_KEYS.items():
        if old in data:
            if new in data:
                raise ConfigError(f"config file {path}: give '{new}' only ('{old}' is its old name)")
            data[new] = data.pop(old)
    unknown = sorted((k for k in data if k not in FIELDS), key=str)  # YAML keys may be numbers or null
    if unknown:
        import difflib

        def named(key: Any) -> str:
            if str(key) in FOREIGN_KEYS:
                return f"'{key}' (kbit's {FOREIGN_KEYS[str(key)]})"
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            return f"'{key}'" + (f" (did you mean {close[0]}?)" if close else "")

        keys = "key" if len(unknown) == 1 else "keys"
        raise ConfigError(f"config file {path}: unknown {keys} {', '.join(map(named, unknown))}; valid keys: {', '.join(FIELDS)}")
    if "options" in data and not isinstance(data["options"], dict):
        raise ConfigError(f"config file {path}: 'options' must be a mapping of method options")
    return data


# A config file is a few dozen settings; aliases that refer to each other can make a small file
# stand for billions of values, which printing or checking one of them would never finish.
MAX_YAML_VALUES = 10_000


def _too_big(value: Any, budget: int) -> bool:
    """Whether ``value`` holds more than ``budget`` values, counting shared ones each time they appear;
    stops counting at the budget, so it is quick whatever the structure."""
    pending = [value]
    while pending:
        budget -= 1
        if budget < 0:
            return True
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            pending.extend(item)
    return False


# Permissions a config file never gives (a file may come from anyone): to run a model's code, to replace a run.
COMMAND_LINE_ONLY = {"trust_remote_code": ("--trust-remote-code", "the permission to run a model's own code"),
                     "overwrite": ("--overwrite", "the permission to replace an earlier run")}
# Settings a resumed run never takes from its kbit.json: permission to run model code is given on
# each invocation, and the folder is the one being resumed.
NOT_RESUMED = ("trust_remote_code", "overwrite", "output")
# Settings a resume takes from the flags: how the rest of the run logs, checkpoints, reports and checks
# and scores its end. Every other setting decides what the run trains, so it stays as recorded: a
# resume that changed one would record a mix of two runs.
RESUMABLE = ("logging_steps", "save_steps", "eval_steps", "report_to", "eval_limit", "max_new_tokens",
             "merge_min_agreement", "merge_tolerance", "trust_remote_code")


def recorded_config(saved: Mapping[str, Any]) -> TrainConfig:
    """A run's recorded ``config`` (its kbit.json) as a validated ``TrainConfig`` (kbit 0.1/0.2's
    ``held_out_fraction`` read as ``held_out``).

    Raises ConfigError naming an unknown key or the invalid setting; null stands for the default.
    """
    if "held_out_fraction" in saved:  # a kbit 0.1/0.2 run: read its split as it was made
        try:
            saved = {**{k: v for k, v in saved.items() if k != "held_out_fraction"}, "held_out": recorded_held_out(saved)}
        except ValueError as exc:
            raise ConfigError(f"invalid value for 'held_out_fraction': {exc}") from None
    unknown = sorted((k for k in saved if k not in FIELDS), key=str)
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}'")
    return build_config(None, saved)


def resume_config(run_dir: str | Path, overrides: Mapping[str, Any]) -> TrainConfig:
    """The settings of the run in ``run_dir`` (its kbit.json), with the ``RESUMABLE`` ``overrides`` (flags) on top.

    Refuses a flag that would change what the run trains (method, options, model, dataset, step budget
    and the rest), naming each change, and ``--output``/``--overwrite``, which a resume does not take.
    """
    from kbit.core.runs.record import FILENAME, read_record

    recorded = read_record(Path(run_dir))  # its config validated on the way in (recorded_config)
    if recorded is None:
        raise ConfigError(f"cannot resume: {run_dir} is not a kbit run (no {FILENAME})")
    where = Path(run_dir) / FILENAME
    if recorded.kind != "run":
        raise ConfigError(f"cannot resume: {where} describes a '{recorded.kind}' output, not a training run")
    if recorded.config is None:
        raise ConfigError(f"cannot resume: {where} has no 'config' object; it is incomplete or was edited")
    saved = {k: v for k, v in recorded.config.to_dict().items() if k not in NOT_RESUMED}
    started = build_config(None, {**saved, "output": str(run_dir)})
    flags = {k: v for k, v in overrides.items() if v is not None}
    _refuse_placement_flags(Path(run_dir), flags.pop("output", None), flags.pop("overwrite", False))
    if "options" in flags:
        flags["options"] = {**started.options, **flags["options"]}
    try:
        wanted = build_config(None, {**saved, **flags, "output": str(run_dir)})
    except ConfigError as exc:
        raise ConfigError(f"cannot resume {run_dir}: {exc}") from None
    changes = resume_changes(started, wanted)
    if changes:
        raise ConfigError(f"cannot resume {run_dir} with other training settings: {'; '.join(changes)}; a resume "
                          "continues the run as it started: drop those flags, or train a new run (--output NEW) with them")
    # a path given another way to the same file: the run goes on with the one it recorded
    return attrs.evolve(wanted, **{f: getattr(started, f) for f in FIELDS if f not in (*RESUMABLE, "options")
                                   and getattr(started, f) != getattr(wanted, f)})


def _refuse_placement_flags(run_dir: Path, output: str | None, overwrite: bool) -> None:
    if output is not None and Path(output).resolve() != run_dir.resolve():
        raise ConfigError(f"--output {output} does not go with --resume: the resumed run stays in {run_dir}; drop --output")
    if overwrite:
        raise ConfigError(f"--overwrite does not go with --resume: a resume keeps what {run_dir} holds; drop --overwrite, "
                          f"or train anew with --output {run_dir} --overwrite")


def resume_changes(started: TrainConfig, wanted: TrainConfig) -> list[str]:
    """What ``wanted`` changes in a run that ``started`` with other settings, as the flags that change it."""
    def shown(value: Any) -> str:
        return "the default" if value is None else str(value)

    changes = [f"--{f.replace('_', '-')} {shown(getattr(wanted, f))} (the run has {shown(getattr(started, f))})"
               for f in FIELDS if f not in (*RESUMABLE, "options") and not _same(getattr(started, f), getattr(wanted, f))]
    for key in sorted(set(started.options) | set(wanted.options)):
        old, new = started.options.get(key), wanted.options.get(key)
        if _option_text(old) != _option_text(new):  # YAML's 4 and the flag's "4" are one value
            changes.append(f"-o {key}={new} (the run has {shown(old) if old is None else f'{key}={old}'})")
    return changes


def _same(recorded: Any, given: Any) -> bool:
    """Equal settings; a path given relative (or through a link) names the same file or folder as the run recorded."""
    if recorded == given:
        return True
    if not (isinstance(recorded, str) and isinstance(given, str)):
        return False
    try:
        return os.path.samefile(os.path.expanduser(recorded), os.path.expanduser(given))
    except (OSError, ValueError):  # a hub id, a missing path: compared as text above
        return False


def _option_text(value: Any) -> str | None:
    return None if value is None else str(value).strip().lower()
