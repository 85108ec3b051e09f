import json

import pytest

from kbit.core.errors import ConfigError
from kbit.core.spec import SCHEMA_VERSION, QuantizationSpec


def make(**overrides):
    fields = dict(method="qlora", weights_bits=4, group_size=64, symmetric=False, backend="bitsandbytes",
                  extras={"quant_type": "nf4", "adapter": {"r": 64}})
    return QuantizationSpec(**{**fields, **overrides})


def test_round_trip_through_json_is_lossless():
    spec = make()
    again = QuantizationSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.to_dict() == spec.to_dict()


def test_spec_is_frozen_and_extras_detached():
    extras = {"a": 1}
    spec = make(extras=extras)
    extras["a"] = 2
    assert spec.extras["a"] == 1
    with pytest.raises(Exception):
        spec.method = "x"
    with pytest.raises(TypeError):
        spec.extras["a"] = 3


@pytest.mark.parametrize("field, value", [
    ("method", "QLoRA"), ("method", ""), ("weights_bits", 7), ("weights_bits", True),
    ("group_size", 0), ("symmetric", "yes"), ("extras", {"x": object()}),
])
def test_invalid_fields_are_refused(field, value):
    with pytest.raises((ValueError, TypeError)):
        make(**{field: value})


def test_from_dict_refuses_newer_schema_and_unknown_fields():
    data = make().to_dict()
    with pytest.raises(ConfigError, match="newer"):
        QuantizationSpec.from_dict({**data, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ConfigError, match="unknown spec field.*bogus"):
        QuantizationSpec.from_dict({**data, "bogus": 1})
    with pytest.raises(ConfigError, match="invalid quantization spec"):
        QuantizationSpec.from_dict({**data, "weights_bits": 9})
