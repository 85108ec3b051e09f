"""Trainer callbacks: ``RoundAfter`` trains a quantization-aware adapter in float first, then through its grid."""

from types import SimpleNamespace

import pytest
import torch

from kbit.core.export.grids import round_to_grid
from kbit.core.model.adapters import attach_adapter
from kbit.core.model.bases import load_base
from kbit.core.train.callbacks import RoundAfter
from kbit.plugin import DeviceInfo
from kbit.testing import get_method


@pytest.fixture()
def qat_model(tiny):
    method = get_method("qat")
    spec = method.resolve_spec({"r": "4", "target": "q4_0", "rounding_after": "0.3"}, DeviceInfo.cpu())
    model = attach_adapter(method.prepare_model(load_base(method, spec, str(tiny)), spec), spec)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model.eval(), spec


def test_the_first_share_of_steps_computes_in_float_and_the_rest_through_the_grid(qat_model):
    model, spec = qat_model
    assert spec.adapter.fake_quant_after == 0.3
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    merged = layer.get_base_layer().weight + layer.get_delta_weight("default")
    x = torch.randn(3, layer.in_features)
    callback = RoundAfter(model, spec.adapter.fake_quant_after)
    args, control = None, SimpleNamespace()
    seen = []
    for step in (0, 2, 3, 9):
        callback.on_step_begin(args, SimpleNamespace(global_step=step, max_steps=10), control)
        with torch.no_grad():
            seen.append(layer(x))
    float_out = torch.nn.functional.linear(x, merged)
    rounded_out = torch.nn.functional.linear(x, round_to_grid(merged, "q4_0"))
    assert torch.allclose(seen[0], float_out, atol=1e-5) and torch.allclose(seen[1], float_out, atol=1e-5)
    assert torch.equal(seen[2], rounded_out) and torch.equal(seen[3], rounded_out)
    callback.on_step_begin(args, SimpleNamespace(global_step=1, max_steps=10), control)  # a run resumed early
    callback.on_train_end(args, SimpleNamespace(global_step=10, max_steps=10), control)
    with torch.no_grad():
        assert torch.equal(layer(x), rounded_out), "merged and scored as it ends: through the grid"


def test_a_float_share_is_refused_without_a_grid_and_at_one():
    from kbit.core.contract.spec import AdapterSettings

    with pytest.raises(ValueError, match="needs fake_quant"):
        AdapterSettings(fake_quant_after=0.5)
    with pytest.raises(ValueError, match="fake_quant_after must be a finite number in"):
        AdapterSettings(fake_quant="q4_0", fake_quant_after=1.0)
