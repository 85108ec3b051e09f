"""Adapter set-up through a method's hooks, on whichever transformers is installed."""

from __future__ import annotations

import warnings

import pytest

from kbit.core.adapters import attach_adapter, checkpointing_enabled
from kbit.core.device import DeviceInfo
from kbit.core.registry import get_method
from kbit.core.sizing import concrete_adapter_spec
from kbit.testing import make_tiny_model


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("setting, expected", [("true", True), ("false", False)])
def test_gradient_checkpointing_is_seen_on_the_adapter_model_without_deprecated_names(tmp_path, method, setting, expected):
    from transformers import AutoModelForCausalLM

    chosen = get_method(method)
    spec = concrete_adapter_spec(chosen.resolve_spec({"gradient_checkpointing": setting}, DeviceInfo.cpu()), rank=4)
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "tiny"),
                                                 quantization_config=chosen.build_quant_config(spec))
    model = attach_adapter(chosen.prepare_model(model, spec), spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a renamed transformers attribute warns before it goes
        assert checkpointing_enabled(model) is expected
    assert checkpointing_enabled(object()) is False
