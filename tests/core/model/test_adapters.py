"""Attaching the adapter from a method's spec: ``-o use_rslora=true`` is PEFT's rank-stabilised scale."""

import math

import pytest
import torch

from kbit.core.model.adapters import attach_adapter
from kbit.core.model.bases import load_base
from kbit.plugin import ConfigError, DeviceInfo
from kbit.testing import get_method


@pytest.mark.parametrize("peft_type", ["lora", "dora"])
def test_rslora_scales_by_the_square_root_of_the_rank_and_merges_exactly(tiny, peft_type):
    method = get_method("lora")
    spec = method.resolve_spec({"r": "16", "lora_alpha": "8", "use_rslora": "true", "peft_type": peft_type},
                               DeviceInfo.cpu())
    model = attach_adapter(method.prepare_model(load_base(method, spec, str(tiny)), spec), spec).eval()  # no dropout
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(16))  # plain LoRA: 8 / 16
    torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)  # a trained adapter, so the scale shows
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        trained = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    assert torch.allclose(trained, merged, atol=1e-4)  # PEFT's merge applies the same scale


def test_rslora_on_a_vera_adapter_is_refused():
    with pytest.raises(ConfigError, match="VeRA has no lora_alpha"):
        get_method("lora").resolve_spec({"use_rslora": "true", "peft_type": "vera"}, DeviceInfo.cpu())
