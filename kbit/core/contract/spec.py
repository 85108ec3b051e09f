"""``QuantizationSpec``: the record a method's ``resolve_spec`` hook returns.

It describes what a method does to the model (bits of weights, activations and KV cache, grouping,
symmetry, backend), and, as typed records, every setting kbit's own pipelines read:

- ``adapter`` (``AdapterSettings``): the adapter kbit attaches and trains; None for a method that
  trains none;
- ``training`` (``TrainingSettings``): compute and adapter dtypes, gradient checkpointing, whether
  and in which dtype to merge after training;
- ``calibration`` (``CalibrationSettings``): how many training texts, how long, feed the method's
  post-training quantization; None when it needs none.

``extras`` holds what only the method itself reads (a quant type, a threshold ...). Records are
frozen, validated on construction, and serialise losslessly to JSON-ready dicts with an explicit
schema version; version 1 specs (kbit 0.1, where the settings above lived in ``extras``) still load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from kbit.core.errors import ConfigError
from kbit.core.export.grids import GRID_TYPES

ADAPTER_INITS = ("default", "loftq")

SCHEMA_VERSION = 2
_BITS = frozenset({1, 2, 3, 4, 5, 6, 8, 16, 32})
PEFT_TYPES = ("lora", "dora", "vera")
DTYPES = ("float32", "bfloat16", "float16")


def _optional_bits(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or value not in _BITS):
        raise ValueError(f"{attribute.name} must be one of {sorted(_BITS)} or None, got {value!r}")


def _method_name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value or value != value.lower() or value.strip() != value:
        raise ValueError(f"method must be a non-empty lowercase name, got {value!r}")


def _optional_positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{attribute.name} must be a positive integer or None, got {value!r}")


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def _finite(minimum: float, below: float | None = None):
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum \
                or (below is not None and value >= below):
            bound = f" in [{minimum}, {below})" if below is not None else f" >= {minimum}"
            raise ValueError(f"{attribute.name} must be a finite number{bound}, got {value!r}")

    return check


def _peft_type(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in PEFT_TYPES:  # attrs' in_ validator raises with a tuple of arguments, printed raw
        raise ValueError(f"peft_type '{value}' is not one kbit trains; choose {', '.join(PEFT_TYPES)}")


def _rank(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value != "auto":
        _positive_int(instance, attribute, value)


def _targets(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    return tuple(str(v) for v in value)


def _check_targets(instance: Any, attribute: attrs.Attribute, value: str | tuple[str, ...]) -> None:
    if isinstance(value, str) and value != "all-linear":
        raise ValueError(f"target_modules must be 'all-linear' or a list of module names, got {value!r}")
    if not isinstance(value, str) and (not value or not all(value)):
        raise ValueError("target_modules must name at least one module")


@attrs.frozen
class AdapterSettings:
    """The adapter kbit attaches to the prepared base and trains (LoRA, DoRA or VeRA).

    ``qa_group_size`` (LoRA only) makes it a QA-LoRA adapter: it sees its input averaged over groups
    of that many consecutive features, so its update is constant within each group of a weight row —
    and merges into a quantized base with one offset per block of that size without rounding.

    ``fake_quant`` (LoRA only) names a GGUF type (``kbit.core.export.grids.GRID_TYPES``): every adapted
    layer then trains through ``W + ΔW`` rounded to that type's grid (quantization-aware training,
    :mod:`kbit.core.model.fake_quant`), and the merge rounds the same way, so the merged model is the file of
    that type. ``fake_quant_after`` (0 ≤ share < 1): the share of the training steps the adapter first
    trains in float (``W + ΔW`` unrounded), before it trains through the rounding for the rest: the
    adapter learns the task on the smooth loss, then adapts to the grid (torchtune's
    ``fake_quant_after_n_steps``, as a share of the run).

    ``init``: "default" (PEFT's: ``B = 0``, the adapter starts as a no-op) or "loftq" (``A`` and ``B``
    start by cancelling the base's quantization error, :mod:`kbit.core.model.loftq`). ``use_rslora``: PEFT's
    rank-stabilised scale ``lora_alpha / sqrt(r)`` instead of ``lora_alpha / r`` (LoRA and DoRA).
    """

    peft_type: str = attrs.field(default="lora", validator=_peft_type)
    r: int | str = attrs.field(default=64, validator=_rank)
    lora_alpha: float = attrs.field(default=16, validator=_finite(0))
    lora_dropout: float = attrs.field(default=0.05, validator=_finite(0, 1))
    target_modules: str | tuple[str, ...] = attrs.field(default="all-linear", converter=_targets, validator=_check_targets)
    qa_group_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive_int))
    fake_quant: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(GRID_TYPES)))
    init: str = attrs.field(default="default", validator=attrs.validators.in_(ADAPTER_INITS))
    fake_quant_after: float = attrs.field(default=0.0, validator=_finite(0, 1))
    use_rslora: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    @qa_group_size.validator
    def _lora_only(self, attribute: attrs.Attribute, value: int | None) -> None:
        if value is not None and self.peft_type != "lora":
            raise ValueError(f"qa_group_size (QA-LoRA) needs peft_type 'lora', not '{self.peft_type}'")

    @use_rslora.validator
    def _scaled_lora(self, attribute: attrs.Attribute, value: bool) -> None:
        if value and self.peft_type == "vera":
            raise ValueError("use_rslora scales a LoRA or DoRA adapter; VeRA has no lora_alpha: drop -o use_rslora")

    @init.validator
    def _loftq_lora(self, attribute: attrs.Attribute, value: str) -> None:
        if value == "loftq" and self.peft_type != "lora":
            raise ValueError(f"init 'loftq' sets a LoRA adapter's A and B; peft_type '{self.peft_type}' has other weights: "
                             "use -o peft_type=lora, or drop -o init=loftq")
        if value == "loftq" and self.fake_quant is not None:
            raise ValueError(f"init 'loftq' does not apply to an adapter trained through the {self.fake_quant} rounding: "
                             "round-to-nearest already gives the grid point nearest to W, so no low-rank start lowers "
                             "the weight error")

    @fake_quant_after.validator
    def _share(self, attribute: attrs.Attribute, value: float) -> None:
        if value and self.fake_quant is None:
            raise ValueError("fake_quant_after needs fake_quant (the rounding it delays)")

    @fake_quant.validator
    def _plain_lora(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None and (self.peft_type != "lora" or self.qa_group_size is not None):
            raise ValueError(f"fake_quant needs a plain LoRA adapter (peft_type 'lora', no qa_group_size), not {self.peft_type}")


@attrs.frozen
class TrainingSettings:
    """How kbit trains and merges. Dtypes are concrete names, already resolved against the device."""

    compute_dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(DTYPES))
    adapter_dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(DTYPES))
    gradient_checkpointing: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    merge_after_train: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    merge_dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(DTYPES))
    # The learning rate a run of this method trains at when it gives none (``kbit train --lr``); None: kbit's
    # default (``kbit.core.train.config.DEFAULT_LR``).
    learning_rate: float | None = attrs.field(default=None, validator=attrs.validators.optional(_finite(0, 1)))


@attrs.frozen
class CalibrationSettings:
    """Calibration texts for post-training quantization: the first ``samples`` training examples, each
    cut to ``max_length`` tokens by the method."""

    samples: int = attrs.field(default=64, validator=_positive_int)
    max_length: int = attrs.field(default=256, validator=_positive_int)


def _json_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # Round-tripping through JSON both validates serialisability and detaches the caller's dict.
    try:
        plain = json.loads(json.dumps(dict(value), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extras must be JSON-serialisable: {exc}") from exc
    return MappingProxyType(plain)


def _record(cls: type):
    """A converter accepting the record itself or its dict form (as read from JSON)."""
    def convert(value: Any) -> Any:
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {a.name for a in attrs.fields(cls)})
            if unknown:
                raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}")
            return cls(**value)
        raise ValueError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")

    return convert


@attrs.frozen(eq=True, hash=False)
class QuantizationSpec:
    """What a quantization method does, independent of any model.

    ``weights_bits`` etc. are ``None`` where the method leaves that part in full precision.
    """

    method: str = attrs.field(validator=[attrs.validators.instance_of(str), _method_name])
    weights_bits: int | None = attrs.field(default=None, validator=_optional_bits)
    activations_bits: int | None = attrs.field(default=None, validator=_optional_bits)
    kv_cache_bits: int | None = attrs.field(default=None, validator=_optional_bits)
    group_size: int | None = attrs.field(default=None, validator=_optional_positive)
    symmetric: bool | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(bool))
    )
    backend: str = attrs.field(default="none", validator=attrs.validators.instance_of(str))
    adapter: AdapterSettings | None = attrs.field(default=None, converter=_record(AdapterSettings))
    training: TrainingSettings = attrs.field(factory=TrainingSettings, converter=_record(TrainingSettings))
    calibration: CalibrationSettings | None = attrs.field(default=None, converter=_record(CalibrationSettings))
    extras: Mapping[str, Any] = attrs.field(factory=dict, converter=_json_mapping)
    schema_version: int = attrs.field(default=SCHEMA_VERSION)

    @schema_version.validator
    def _check_schema(self, attribute: attrs.Attribute, value: int) -> None:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version must be {SCHEMA_VERSION}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` gives an equal spec."""
        data = attrs.asdict(self, recurse=True)
        data["extras"] = json.loads(json.dumps(dict(self.extras)))
        if self.adapter is not None and not isinstance(self.adapter.target_modules, str):
            data["adapter"]["target_modules"] = list(self.adapter.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizationSpec:
        """Rebuild a spec (schema 1 or 2); ``ConfigError`` for a newer schema, unknown or invalid fields."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a quantization spec must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ConfigError(
                f"spec schema version {version} is newer than this kbit supports ({SCHEMA_VERSION}); "
                "upgrade kbit to read it"
            )
        if version == 1:
            data = upgrade_v1(data)
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown spec field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid quantization spec: {exc}") from exc


_V1_TRAINING = ("compute_dtype", "adapter_dtype", "gradient_checkpointing", "merge_after_train", "merge_dtype")
_V1_CALIBRATION = {"calibration_samples": "samples", "calibration_max_length": "max_length"}


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 spec dict (kbit 0.1: adapter, training and calibration settings inside ``extras``)
    in version-2 form."""
    extras = dict(data.get("extras") or {})
    upgraded = {k: v for k, v in data.items() if k not in ("extras", "schema_version")}
    adapter = extras.pop("adapter", None)
    upgraded["adapter"] = adapter
    training = {key: extras.pop(key) for key in _V1_TRAINING if key in extras}
    upgraded["training"] = training
    calibration = {new: extras.pop(old) for old, new in _V1_CALIBRATION.items() if old in extras}
    upgraded["calibration"] = calibration or None
    upgraded["extras"] = extras
    upgraded["schema_version"] = SCHEMA_VERSION
    return upgraded
