"""LoRA's input dropout applied inside the ``A`` layer: same function and gradients, less memory kept."""

from __future__ import annotations

import torch

from kbit.core.model.adapters import attach_adapter
from kbit.core.system.device import DeviceInfo
from kbit.core.model.lora_dropout import DropoutLoraA, fuse_lora_dropout
from kbit.core.methods.registry import get_method
from kbit.core.train.sizing import concrete_adapter_spec


def dropout_layer(p: float, shape=(8, 16)) -> DropoutLoraA:
    layer = torch.nn.Linear(shape[1], shape[0], bias=False)
    layer.__class__ = DropoutLoraA
    layer.dropout_p = p
    return layer


def test_output_and_gradients_are_those_of_the_dropped_input():
    torch.manual_seed(0)
    layer = dropout_layer(0.3).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    out = layer(x)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    # The mask is recovered from the input gradient: (upstream @ W) has no zeros, so zeros mark dropped inputs.
    keep = x.grad != 0
    assert 0.5 < keep.float().mean() < 0.9
    reference_x = x.detach().clone().requires_grad_(True)
    weight = layer.weight.detach().clone().requires_grad_(True)
    reference = torch.nn.functional.linear(reference_x * keep / 0.7, weight)
    reference.backward(upstream)
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(layer.weight.grad, weight.grad)


def test_each_call_draws_a_new_mask_with_the_right_rate():
    torch.manual_seed(1)
    layer = dropout_layer(0.25).train()
    x = torch.ones(64, 16, requires_grad=True)
    masks = []
    for _ in range(2):
        x.grad = None
        layer(x).sum().backward()
        masks.append(x.grad != 0)
    assert not torch.equal(masks[0], masks[1])
    assert abs(float(masks[0].float().mean()) - 0.75) < 0.05


def test_outside_training_it_is_the_plain_linear_layer():
    layer = dropout_layer(0.5).eval()
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), x @ layer.weight.T)


def lora_model(tiny, **options):
    from transformers import AutoModelForCausalLM

    method = get_method("lora")
    spec = concrete_adapter_spec(method.resolve_spec({"compute_dtype": "float32", **options}, DeviceInfo.cpu()), rank=4)
    torch.manual_seed(0)
    return attach_adapter(method.prepare_model(AutoModelForCausalLM.from_pretrained(tiny), spec), spec)


def saved_bytes(model, ids) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one training forward."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).logits.sum()
    return sum(storages.values())


def test_attached_adapters_keep_less_for_backward_and_compute_the_same_in_eval(tiny):
    fused = lora_model(tiny, lora_dropout=0.1)
    assert any(isinstance(m, DropoutLoraA) for m in fused.modules())
    reference = lora_model(tiny, lora_dropout=0.1)
    for module in reference.modules():  # undo the fusion: PEFT's own dropout module and plain Linear
        if isinstance(module, DropoutLoraA):
            module.__class__ = torch.nn.Linear
    for module in reference.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in dropouts:
                dropouts[name] = torch.nn.Dropout(0.1)
    assert fused.state_dict().keys() == reference.state_dict().keys()
    ids = torch.randint(0, 100, (2, 24))
    fused.train(), reference.train()
    assert saved_bytes(fused, ids) < saved_bytes(reference, ids)
    fused.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, reference(input_ids=ids).logits)


def test_no_dropout_and_dora_layers_are_left_to_peft(tiny):
    assert not any(isinstance(m, DropoutLoraA) for m in lora_model(tiny, lora_dropout=0.0).modules())
    dora = lora_model(tiny, peft_type="dora", lora_dropout=0.1)
    assert any(isinstance(m, torch.nn.Dropout) for m in dora.modules())
    assert not any(isinstance(m, DropoutLoraA) for m in dora.modules())
    assert fuse_lora_dropout(dora) == 0
