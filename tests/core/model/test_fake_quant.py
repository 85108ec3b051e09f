"""Quantization-aware LoRA (``AdapterSettings.fake_quant``): the forward is the rounded merged weight,
the gradient reaches the adapter straight through, and a merge rounded the same way is the trained model."""

import pytest
import torch

from kbit.core.model.adapters import attach_adapter
from kbit.core.model.bases import load_base
from kbit.core.export.grids import round_to_grid
from kbit.core.model.fake_quant import GridLoraLinear, round_merged
from kbit.plugin import DeviceInfo
from kbit.testing import get_method


@pytest.fixture()
def qat_model(tiny):
    method = get_method("qat")
    spec = method.resolve_spec({"r": "4", "target": "q4_0"}, DeviceInfo.cpu())
    model = attach_adapter(method.prepare_model(load_base(method, spec, str(tiny)), spec), spec)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    return model


def _layer(model) -> GridLoraLinear:
    return model.base_model.model.model.layers[0].self_attn.q_proj


def test_an_adapted_layer_multiplies_by_its_merged_weight_rounded_to_the_grid(qat_model):
    layer = _layer(qat_model)
    assert isinstance(layer, GridLoraLinear)
    merged = layer.get_base_layer().weight + layer.get_delta_weight("default")
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, round_to_grid(merged, "q4_0")))
    untouched = qat_model.base_model.model.model.layers[0].mlp  # adapted too: every linear layer is rounded
    assert isinstance(untouched.down_proj, GridLoraLinear)


def test_the_gradient_reaches_the_adapter_as_plain_lora_and_the_input_through_the_rounded_weight(qat_model):
    layer = _layer(qat_model).train()
    layer.lora_dropout["default"] = torch.nn.Identity()
    layer.lora_A["default"].__class__ = torch.nn.Linear  # without kbit's fused dropout
    x = torch.randn(5, layer.in_features, requires_grad=True)
    grad_out = torch.randn(5, layer.out_features)
    layer(x).backward(grad_out)
    a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    # straight through: dL/dW_eff = g^T x, so dL/dB = s g^T (A x) and dL/dA = s B^T g^T x
    assert torch.allclose(b.grad, s * grad_out.T @ (x.detach() @ a.T), atol=1e-5)
    assert torch.allclose(a.grad, s * b.T @ grad_out.T @ x.detach(), atol=1e-5)
    assert torch.allclose(x.grad, grad_out @ layer.rounded_weight(["default"]), atol=1e-5)


def test_an_adapter_written_through_data_is_seen_by_the_next_forward(qat_model):
    layer = _layer(qat_model).eval()
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        before = layer(x)
        layer.lora_B["default"].weight.data.mul_(3.0)  # a loader's write, which no version counter records
        after = layer(x)
    assert not torch.equal(before, after)


def test_a_merge_rounded_the_same_way_is_the_trained_model_bit_for_bit(qat_model):
    qat_model.eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
    with torch.no_grad():
        trained = qat_model(input_ids=ids).logits
        merged = round_merged(qat_model.merge_and_unload(), "q4_0")
        assert torch.equal(merged(input_ids=ids).logits, trained)


def test_fake_quant_is_refused_on_anything_but_plain_lora():
    from kbit.core.contract.spec import AdapterSettings

    with pytest.raises(ValueError, match="plain LoRA"):
        AdapterSettings(peft_type="dora", fake_quant="q4_0")
    with pytest.raises(ValueError, match="fake_quant"):
        AdapterSettings(fake_quant="q4_k")
