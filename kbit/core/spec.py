"""``QuantizationSpec``: the record a method's ``resolve_spec`` hook returns.

It describes what a method does to the model (bits of weights, activations and KV cache, grouping,
symmetry, backend) plus method-specific ``extras``. It is frozen, validated on construction, and
serialises losslessly to JSON-ready dicts with an explicit schema version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from kbit.core.errors import ConfigError

SCHEMA_VERSION = 1
_BITS = frozenset({1, 2, 3, 4, 5, 6, 8, 16, 32})


def _optional_bits(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or value not in _BITS):
        raise ValueError(f"{attribute.name} must be one of {sorted(_BITS)} or None, got {value!r}")


def _method_name(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value or value != value.lower() or value.strip() != value:
        raise ValueError(f"method must be a non-empty lowercase name, got {value!r}")


def _optional_positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{attribute.name} must be a positive integer or None, got {value!r}")


def _json_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    # Round-tripping through JSON both validates serialisability and detaches the caller's dict.
    try:
        plain = json.loads(json.dumps(dict(value), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extras must be JSON-serialisable: {exc}") from exc
    return MappingProxyType(plain)


@attrs.frozen(eq=True, hash=False)
class QuantizationSpec:
    """What a quantization method does, independent of any model.

    ``weights_bits`` etc. are ``None`` where the method leaves that part in full precision.
    ``extras`` holds method-specific, JSON-serialisable settings (quant type, LoRA parameters, ...).
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
    extras: Mapping[str, Any] = attrs.field(factory=dict, converter=_json_mapping)
    schema_version: int = attrs.field(default=SCHEMA_VERSION)

    @schema_version.validator
    def _check_schema(self, attribute: attrs.Attribute, value: int) -> None:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version must be {SCHEMA_VERSION}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict(to_dict())`` gives an equal spec."""
        data = attrs.asdict(self, recurse=False)
        data["extras"] = json.loads(json.dumps(dict(self.extras)))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantizationSpec:
        """Rebuild a spec; raises ``ConfigError`` for a newer schema, unknown or invalid fields."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a quantization spec must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ConfigError(
                f"spec schema version {version} is newer than this kbit supports ({SCHEMA_VERSION}); "
                "upgrade kbit to read it"
            )
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown spec field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid quantization spec: {exc}") from exc
