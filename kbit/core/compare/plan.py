"""Planning a comparison: every input checked, every run's fate decided, nothing written.

``plan_compare`` refuses with a ``ConfigError`` (exit 2) an unknown or empty method list, an
option no chosen method has, invalid settings, a model or dataset that cannot be read, an output
folder that holds other data (or a run, or the model or dataset; ``kbit.core.runs.outputs``), a symlink
inside it on the way to a run or evaluation folder, and a run folder in it trained with other
settings. A method that is known but cannot run here (its extra is not installed, its plugin is
broken) is not refused: it becomes a failed row of the report with the reason.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.compare.runs import TRAIN, RunDecision, decide
from kbit.core.errors import ConfigError, KbitError, UnknownMethodError
from kbit.core.contract.options import choice as one_of, integer, number
from kbit.core.data.split import held_out_size
from kbit.core.runs.outputs import check_no_link_inside_output, claim, kbit_kind
from kbit.core.train.config import TrainConfig, build_config, located

log = logging.getLogger("kbit")
COMPARE_ROOT = Path("compare")
KIND = "compare"  # the ``kind`` in report.json that marks a folder as kbit compare's own output


@attrs.frozen
class CompareConfig:
    """Settings of one ``kbit compare``. ``methods=None`` compares every ready method."""

    methods: tuple[str, ...] | None = None
    model: str = "default"
    dataset: str = "arith"
    columns: str | None = None
    max_steps: int = attrs.field(default=20, converter=integer(minimum=1))
    batch_size: int = attrs.field(default=8, converter=integer(minimum=1))
    seed: int = attrs.field(default=0, converter=integer(minimum=0, maximum=2**32 - 1))
    max_examples: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=2)))
    held_out: int | float | str | None = attrs.field(default=None, converter=held_out_size)  # as kbit train's
    turns: str = attrs.field(default="last", converter=one_of("last", "all"))
    lr: float | None = attrs.field(default=None, converter=attrs.converters.optional(number(minimum=0)))  # None: each method's own
    limit: int = attrs.field(default=50, converter=integer(minimum=1))
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    out: str | None = None
    overwrite: bool = False


def build_compare_config(**values: Any) -> CompareConfig:
    """A ``CompareConfig`` from CLI-style values (``None`` = default); invalid values raise ConfigError."""
    chosen = {k: v for k, v in values.items() if v is not None}
    if "methods" in chosen:
        chosen["methods"] = parse_methods(chosen["methods"])
    for key, value in chosen.items():
        try:
            CompareConfig(**{key: value})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid value for '{key}': {exc}") from None
    return CompareConfig(**chosen)


def parse_methods(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"a, b"`` (or a list of such strings) → ``("a", "b")``, method names in order; refuses an empty list."""
    items = [value] if isinstance(value, str) else list(value)
    names = tuple(n.strip() for item in items for n in str(item).split(",") if n.strip())
    if not names:
        raise ConfigError("--methods is empty; name the methods to compare, e.g. --methods lora,qlora "
                          "(see 'kbit methods'), or leave it out to compare every ready method")
    return names


@attrs.frozen
class MethodChoice:
    """One method to compare and the ``-o`` options it takes; ``problem`` says why it cannot run here."""

    name: str
    options: Mapping[str, Any] = attrs.field(converter=dict)
    skipped: tuple[str, ...] = ()
    problem: str | None = None


@attrs.frozen
class PlannedMethod:
    """A method with its run settings (``train``) and what happens to its run folder (``decision``)."""

    choice: MethodChoice
    train: TrainConfig
    decision: RunDecision | None  # None when the method cannot run here

    @property
    def name(self) -> str:
        return self.choice.name

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output)


@attrs.frozen
class ComparePlan:
    config: CompareConfig
    methods: tuple[PlannedMethod, ...]
    out_dir: Path
    model_name: str
    dataset: dict[str, Any]  # TaskData.describe() of the data every method trains and is scored on
    replace_other_data: bool  # --overwrite given and the folder holds something that is not a comparison


def plan_compare(config: CompareConfig) -> ComparePlan:
    """Check every input and decide every run; raises ConfigError before anything is written."""
    from kbit.core.data import load_task_data
    from kbit.core.model.sources import resolve_model

    choices = choose_methods(config.methods, config.options)
    template = located(build_config(None, {
        "model": config.model, "dataset": config.dataset,
        "columns": config.columns, "max_steps": config.max_steps, "batch_size": config.batch_size,
        "seed": config.seed, "max_examples": config.max_examples, "held_out": config.held_out, "turns": config.turns,
        "lr": config.lr, "eval_limit": 0,
    }))
    data = load_task_data(template.dataset, columns=template.columns, held_out=template.held_out,
                          max_examples=template.max_examples, seed=template.seed)
    if not data.train or not data.held_out:
        raise ConfigError(f"dataset {data.source} has {len(data.train)} training and {len(data.held_out)} held-out "
                          "examples; a comparison needs both (use more rows)")
    source = resolve_model(template.model)
    out_dir = _claim_out_dir(config, source.name, data.name,
                             inputs=(template.model, source.path, template.dataset, template.held_out_file))
    own = kbit_kind(out_dir) == KIND
    check_no_link_inside_output(out_dir / "evals" / "base", "--out")
    planned = []
    for choice in choices:
        train = attrs.evolve(template, method=choice.name, options=choice.options,
                             output=str(out_dir / "runs" / choice.name))
        for folder in (Path(train.output), out_dir / "evals" / choice.name):  # before any run is read through one
            check_no_link_inside_output(folder, "--out")
        decision = None
        if choice.problem is None and not own:
            decision = RunDecision(TRAIN)  # a new folder: nothing to reuse
        elif choice.problem is None:
            decision = decide(Path(train.output), train, data_fingerprint=data.fingerprint(),
                              model_revision=source.revision, overwrite=config.overwrite)
        planned.append(PlannedMethod(choice, train, decision))
    return ComparePlan(config, tuple(planned), out_dir, source.name, data.describe(),
                       replace_other_data=out_dir.exists() and not own and config.overwrite)


def choose_methods(names: Sequence[str] | None, options: Mapping[str, Any]) -> list[MethodChoice]:
    """The methods to compare, by canonical name, each with the ``options`` it has.

    Unknown names, and options that no chosen method has, raise ConfigError; a known method that
    cannot run here (missing extra, broken plugin) is kept with its ``problem``.
    """
    from kbit.core.methods.registry import READY, default_registry

    registry = default_registry()
    if names is None:
        names = [r.name for r in registry.records() if r.status == READY]
        if not names:
            raise ConfigError("no method is ready to compare; see 'kbit methods' for what to install")
    records = {r.name: r for r in registry.records()}
    aliases = {alias: r.name for r in records.values() if r.info for alias in r.info.aliases}
    choices: dict[str, MethodChoice] = {}
    for raw in names:
        problem = None
        try:
            method = registry.get(raw)
            canonical, accepted = method.name, method.info.options.names
        except UnknownMethodError as exc:
            raise ConfigError(f"--methods: {exc}") from None
        except KbitError as exc:  # known here, but not usable: a missing extra, a broken or disabled plugin
            key = raw.strip().lower()
            canonical = aliases.get(key, key)
            info = records[canonical].info if canonical in records else None
            accepted, problem = (info.options.names if info else []), str(exc)
        if canonical in choices:  # named twice (or by an alias): compared once
            alias = f" ({raw.strip()} is its alias)" if raw.strip().lower() != canonical else ""
            log.warning("--methods names %s twice%s; it is compared once", canonical, alias)
            continue
        choices[canonical] = MethodChoice(canonical, {k: v for k, v in options.items() if k in accepted},
                                          tuple(k for k in options if k not in accepted), problem)
    known = {k for c in choices.values() for k in c.options}
    unused = [k for k in options if k not in known]
    if unused:
        every = sorted({n for c in choices for n in _option_names(records, c)})
        close = difflib.get_close_matches(unused[0], every, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"option '{unused[0]}' is not an option of any method compared ({', '.join(choices)}){hint}; "
                          "see 'kbit spec METHOD' for each method's options")
    return list(choices.values())


def _option_names(records: Mapping[str, Any], name: str) -> list[str]:
    record = records.get(name)
    return record.info.options.names if record is not None and record.info else []


def default_out_dir(model_name: str, dataset_name: str, max_steps: int, lr: float | None = None) -> Path:
    """compare/MODEL-DATASET-Nsteps, with -lrX where one learning rate is given: comparisons of other rates apart."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", f"{model_name}-{dataset_name}-{max_steps}steps"
                  + (f"-lr{lr:g}" if lr is not None else ""))
    return COMPARE_ROOT / name


def _claim_out_dir(config: CompareConfig, model_name: str, dataset_name: str, inputs: tuple[str | None, ...]) -> Path:
    """The comparison folder under kbit's output rule: an earlier comparison is continued, never replaced;
    ``inputs`` (the model and dataset) are never replaced."""
    target = Path(config.out) if config.out else default_out_dir(model_name, dataset_name, config.max_steps, config.lr)
    return claim(target, is_own=lambda p: kbit_kind(p) == KIND, kind=KIND, overwrite=config.overwrite, flag="--out",
                 what="comparison folder", inputs=inputs)
