import json

import pytest

from kbit.core.errors import ConfigError
from kbit.core.contract.spec import SCHEMA_VERSION, AdapterSettings, CalibrationSettings, QuantizationSpec, TrainingSettings


def make(**overrides):
    fields = dict(method="qlora", weights_bits=4, group_size=64, symmetric=False, backend="bitsandbytes",
                  adapter=AdapterSettings(r=64, target_modules=("q_proj", "v_proj")),
                  training=TrainingSettings(compute_dtype="bfloat16"), calibration=CalibrationSettings(samples=8),
                  extras={"quant_type": "nf4"})
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
    ("adapter", {"r": 0}), ("adapter", {"lora_dropout": float("nan")}), ("adapter", {"peft_type": "ia3"}),
    ("adapter", {"target_modules": []}), ("adapter", {"rank": 8}), ("training", {"compute_dtype": "float64"}),
    ("training", {"merge_after_train": "yes"}), ("calibration", {"samples": 0}), ("adapter", "lora"),
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


def test_a_version_1_spec_of_kbit_0_1_is_read_into_typed_settings():
    v1 = {"method": "gptq", "weights_bits": 4, "activations_bits": None, "kv_cache_bits": None, "group_size": None,
          "symmetric": True, "backend": "llm-compressor", "schema_version": 1,
          "extras": {"adapter": {"peft_type": "lora", "r": 64, "lora_alpha": 16, "lora_dropout": 0.05,
                                 "target_modules": "all-linear"},
                     "compute_dtype": "float32", "adapter_dtype": "float32", "gradient_checkpointing": False,
                     "merge_after_train": True, "merge_dtype": "float32", "calibration_samples": 16,
                     "calibration_max_length": 64, "scheme": "W4A16", "dampening": 0.01}}
    spec = QuantizationSpec.from_dict(v1)
    assert spec.adapter == AdapterSettings(r=64)
    assert spec.training == TrainingSettings()
    assert spec.calibration == CalibrationSettings(samples=16, max_length=64)
    assert dict(spec.extras) == {"scheme": "W4A16", "dampening": 0.01}
    assert spec.schema_version == SCHEMA_VERSION == 2
