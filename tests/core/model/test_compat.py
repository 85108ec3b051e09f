"""Checkpointing across the transformers range: CI runs this with 5.17 and with the newest release.

Each check turns FutureWarning into an error around kbit's own calls, so a name transformers has
deprecated (and will drop in v6) fails here on the newer release rather than breaking later.
"""

from __future__ import annotations

import warnings

import pytest

from kbit.core.model.adapters import attach_adapter
from kbit.core.model.compat import checkpointing_arguments, checkpointing_enabled
from kbit.core.system.device import DeviceInfo
from kbit.core.methods.registry import get_method
from kbit.core.train.sizing import concrete_adapter_spec


@pytest.mark.parametrize("setting, expected", [("true", True), ("false", False)])
def test_the_adapter_model_checkpoints_as_asked(tiny, setting, expected):
    import torch
    from transformers import AutoModelForCausalLM

    chosen = get_method("lora")
    spec = concrete_adapter_spec(chosen.resolve_spec({"gradient_checkpointing": setting}, DeviceInfo.cpu()), rank=4)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        prepared = chosen.prepare_model(base, spec)
    model = attach_adapter(prepared, spec)  # (peft itself still asks transformers by the old name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert checkpointing_enabled(model) is expected
    model.train()
    ids = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=ids, labels=ids).loss.backward()  # gradients reach the adapter through the recompute
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_the_quantized_base_reports_checkpointing(tiny):
    from transformers import AutoModelForCausalLM

    chosen = get_method("qlora")  # peft.prepare_model_for_kbit_training turns it on here
    spec = concrete_adapter_spec(chosen.resolve_spec({"gradient_checkpointing": "true"}, DeviceInfo.cpu()), rank=4)
    base = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=chosen.build_quant_config(spec))
    model = attach_adapter(chosen.prepare_model(base, spec), spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert checkpointing_enabled(model) is True
    assert checkpointing_enabled(object()) is False


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_arguments_switch_checkpointing(tmp_path, enabled):
    from trl import SFTConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = SFTConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **checkpointing_arguments(SFTConfig, enabled))
    on = getattr(args, "activation_checkpointing", None)
    assert (args.gradient_checkpointing if on is None else on) is enabled
