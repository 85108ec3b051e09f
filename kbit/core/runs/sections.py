"""The typed parts of a run's record (``RunRecord``): what each stage measured, field by field.

Each part is an attrs class with one field per figure kbit records, checked on the way in (a field of
the wrong type is refused in one line naming it) and written back with every field present, null
where nothing was measured. A key this kbit does not know (a newer kbit's, a plugin's) is kept in
``extra`` and written back as it was read. ``kbit.core.runs.record`` reads and writes the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

_TYPE_NAMES = {str: "a string", dict: "an object", list: "a list", bool: "true/false", int: "a whole number",
               float: "a number", type(None): "null"}
NUMBER = (int, float)
S = TypeVar("S", bound="Section")


def typed(*types: type) -> Any:
    """An attrs validator: the value is one of ``types`` (true/false is not a number)."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            names = (t for t in types if not (t is int and float in types))  # "a number" covers whole ones
            expected = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in names))
            raise ValueError(f"field '{attribute.name}' must be {expected}, got {type(value).__name__}")

    return check


def value(*types: type) -> Any:
    """A field holding one of ``types`` or null, null by default."""
    return attrs.field(default=None, validator=typed(*types, type(None)))


def listed() -> Any:
    return attrs.field(factory=list, validator=typed(list))


def section(cls: type[S], name: str) -> Any:
    """The field ``name`` holding a ``cls`` part, read from its JSON object; null when the stage has not run."""
    return attrs.field(default=None, converter=lambda data: read_part(name, cls, data))


def read_part(name: str, cls: type[S], data: Any) -> S | None:
    """``data`` as a ``cls`` part (or None); a ValueError names the field by its path (``train.steps``)."""
    try:
        return cls.coerce(data)
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text.replace("field '", f"field '{name}.", 1) if "field '" in text else f"field '{name}' {text}") from None


@attrs.define(kw_only=True)
class Section:
    """A part of the record: known fields typed, other keys kept in ``extra``."""

    extra: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """The part from its JSON object; ValueError names a field of the wrong type."""
        if not isinstance(data, Mapping):
            raise ValueError(f"must be an object, got {type(data).__name__}")
        known = {a.name for a in attrs.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def coerce(cls: type[S], data: Any) -> S | None:
        """``data`` as a ``cls``: itself, read from a mapping, or None."""
        return data if data is None or isinstance(data, cls) else cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for a in attrs.fields(type(self)):
            if a.name == "extra":
                continue
            item = getattr(self, a.name)
            if isinstance(item, Section):
                item = item.to_dict()
            elif isinstance(item, dict):
                item = {k: v.to_dict() if isinstance(v, Section) else v for k, v in item.items()}
            out[a.name] = item
        return {**out, **self.extra}

    def updated(self: S, **values: Any) -> S:
        """A copy with ``values`` set (unknown names go to ``extra``)."""
        return type(self).from_dict({**self.to_dict(), **values})


@attrs.define(kw_only=True)
class BaseModelInfo(Section):
    """The base model as resolved (``kbit.core.model.sources.ModelSource``)."""

    path: str | None = value(str)
    name: str | None = value(str)
    origin: str | None = value(str)
    revision: str | None = value(str)
    hub_id: str | None = value(str)
    license: str | None = value(str)


@attrs.define(kw_only=True)
class DatasetInfo(Section):
    """The data a run trained and scored on (``TaskData.describe``)."""

    name: str | None = value(str)
    task: str | None = value(str)
    source: str | None = value(str)
    train_examples: int | None = value(int)
    held_out_examples: int | None = value(int)
    fingerprint: str | None = value(str)
    held_out_trained_prompts: int | None = value(int)  # held-out items asking a prompt a training row asks too


@attrs.define(kw_only=True)
class Training(Section):
    """The training stage: its steps and their tokens, speed against the matmul peak, the adapter's digests."""

    batch_size: int | None = value(int)
    steps: int | None = value(int)
    world_size: int | None = value(int)
    resumed_from: str | None = value(str)
    rank_adapter_digests: list[str] = listed()
    held_out_loss_items: int | None = value(int)
    tokens_real: int | None = value(int)
    tokens_in_batches: int | None = value(int)
    step_seconds: float | None = value(*NUMBER)
    tokens_per_s: float | None = value(*NUMBER)
    flop_per_token: int | None = value(int)
    achieved_gflops: float | None = value(*NUMBER)
    peak_gflops: float | None = value(*NUMBER)
    mfu: float | None = value(*NUMBER)
    peak: str | None = value(str)  # what the peak was measured on
    loftq: dict[str, Any] | None = value(dict)  # the LoftQ start's weight errors, when the spec asked for it
    adapter_files: list[str] | None = value(list)  # what adapter/ holds as kbit wrote it (the names at its top)


@attrs.define(kw_only=True)
class Merge(Section):
    """The merge stage: what was done and why, and how closely the merged model computes the trained one."""

    action: str | None = value(str)
    reason: str | None = value(str)
    base: str | None = value(str)
    base_used: str | None = value(str)
    dtype: str | None = value(str)
    base_dtype: str | None = value(str)
    min_top1_agreement: float | None = value(*NUMBER)
    max_error_share: float | None = value(*NUMBER)
    top1_agreement: float | None = value(*NUMBER)
    max_abs_logit_diff: float | None = value(*NUMBER)
    mean_abs_logit_diff: float | None = value(*NUMBER)
    max_abs_logit: float | None = value(*NUMBER)
    positions: int | None = value(int)
    adapter_effect: float | None = value(*NUMBER)
    files: list[str] | None = value(list)  # what merged/ holds as kbit wrote it (the names at its top)


@attrs.define(kw_only=True)
class Quantization(Section):
    """A post-training quantization's output: method, format, size, time and calibration."""

    method: str | None = value(str)
    spec: dict[str, Any] | None = value(dict)
    format: str | None = value(str)
    config_groups: dict[str, Any] | None = value(dict)
    size_bytes: int | None = value(int)
    seconds: float | None = value(*NUMBER)
    calibration_samples: int | None = value(int)
    source: str | None = value(str)
    dataset: dict[str, Any] | None = value(dict)
    files: list[str] | None = value(list)  # what the quantized folder holds as kbit wrote it: all a re-quantize may replace


@attrs.define(kw_only=True)
class Export(Section):
    """One deploy file and its check against the model it was written from (the check's other figures in
    ``extra``: KL, near-ties, speed in the runtime)."""

    file: str | None = value(str)
    format: str | None = value(str)
    type: str | None = value(str)
    size_bytes: int | None = value(int)
    created: str | None = value(str)
    write_seconds: float | None = value(*NUMBER)
    base_file: str | None = value(str)
    dataset: dict[str, Any] | None = value(dict)
    items: int | None = value(int)
    exact_match: float | None = value(*NUMBER)
    top1_agreement: float | None = value(*NUMBER)
    max_abs_logit_diff: float | None = value(*NUMBER)
    mean_abs_logit_diff: float | None = value(*NUMBER)
    source: dict[str, Any] = attrs.field(factory=dict, validator=typed(dict))  # the model checked against


@attrs.define(kw_only=True)
class HeldOut(Section):
    """One model's held-out scores (its task's other means in ``extra``); ``model`` says which, in a list of variants."""

    model: str | None = value(str)
    items: int = attrs.field(default=0, validator=typed(int))
    exact_match: float | None = value(*NUMBER)
    exact_match_hits: int | None = value(int)
    exact_match_ci95: list[float] | None = value(list)
    f1: float | None = value(*NUMBER)
    answers_cut: int | None = value(int)
    mean_new_tokens: float | None = value(*NUMBER)
    samples: list[Any] | None = value(list)


def _variants(data: Any) -> dict[str, HeldOut]:
    if not isinstance(data, Mapping):
        raise ValueError(f"field 'variants' must be an object, got {type(data).__name__}")
    return {str(name): read_part(f"variants.{name}", HeldOut, scores) for name, scores in data.items()}


@attrs.define(kw_only=True)
class Scores(Section):
    """Held-out scores of a run: the base before training, the trained adapter after, and every variant
    it shipped (``variants``: adapter, ``merged/``, ``quantized/``, each deploy file) on the same items."""

    before: HeldOut | None = section(HeldOut, "before")
    after: HeldOut | None = section(HeldOut, "after")
    variants: dict[str, HeldOut] = attrs.field(factory=dict, converter=_variants)
    generation: dict[str, Any] | None = value(dict)  # the answer budget (``GenerationBudget``)
    scoring: str | None = value(str)  # what compared the answers
    min_items: int | None = value(int)
    too_few_items: bool | None = value(bool)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scores:
        # Schemas 1 and 2 also kept exact_match_before/after, copies of before/after's own figure; a record
        # with the copy alone (kbit 0.1) keeps it as that side's figure.
        if not isinstance(data, Mapping):
            raise ValueError(f"must be an object, got {type(data).__name__}")
        data = dict(data)
        for side in ("before", "after"):
            copy = data.pop(f"exact_match_{side}", None)
            if data.get(side) is None and copy is not None:
                data[side] = {"exact_match": copy}
        return super().from_dict(data)

    @property
    def exact_match_after(self) -> float | None:
        return self.after.exact_match if self.after is not None else None
