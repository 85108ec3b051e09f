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
    scale = 65536 / (65536 - round(0.3 * 65536))  # 1 / (1 - p) for p rounded to 1/65536 (keep_mask)
    reference = torch.nn.functional.linear(reference_x * keep * scale, weight)
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


def test_masks_keep_one_minus_p_from_torchs_generator_and_scale_by_the_rounded_p():
    from kbit.core.model.lora_dropout import keep_mask

    shape = torch.Size((64, 1000))
    torch.manual_seed(3)
    first, scale = keep_mask(shape, 0.1, torch.device("cpu"))
    torch.manual_seed(3)
    again, _ = keep_mask(shape, 0.1, torch.device("cpu"))
    other, _ = keep_mask(shape, 0.1, torch.device("cpu"))
    assert first.shape == shape and first.dtype == torch.bool
    assert torch.equal(first, again) and not torch.equal(first, other)  # seeded, and fresh per call
    dropped = round(0.1 * 65536)
    assert scale == 65536 / (65536 - dropped)
    assert abs(float(first.float().mean()) - (1 - dropped / 65536)) < 0.005
    lanes = [float(first.view(-1)[lane::4].float().mean()) for lane in range(4)]  # the four quarters of a draw
    assert max(lanes) - min(lanes) < 0.01


def grouped(model) -> dict[str, list[str]]:
    """For each SharedInput group of ``model``: the names of its members' LoRA layers."""
    names = {id(module): name for name, module in model.named_modules()}
    groups: dict[int, list[str]] = {}
    for module in model.modules():
        if isinstance(module, DropoutLoraA) and module.shared is not None:
            groups.setdefault(id(module.shared), []).append(names[id(module)].split(".")[-3])
    return {"+".join(members): members for members in groups.values()}


def test_siblings_given_the_same_input_share_one_a_product_and_compute_the_same(tiny):
    shared = lora_model(tiny, lora_dropout=1e-6)  # a mask that keeps everything: the products must agree
    alone = lora_model(tiny, lora_dropout=1e-6)
    assert set(grouped(shared)) == {"q_proj+k_proj+v_proj", "gate_proj+up_proj"}
    for module in alone.modules():
        if isinstance(module, DropoutLoraA) and module.shared is not None:
            module.shared.release()
    assert grouped(alone) == {}
    alone.load_state_dict(shared.state_dict())
    for model in (shared, alone):
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    ids = torch.randint(0, 100, (2, 24))
    results = []
    for model in (shared, alone):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6)


def test_a_member_given_another_input_computes_alone(tiny):
    model = lora_model(tiny, lora_dropout=1e-6).train()
    attention = model.base_model.model.model.layers[0].self_attn
    q, k = attention.q_proj.lora_A["default"], attention.k_proj.lora_A["default"]
    x, y = torch.randn(2, 5, q.in_features), torch.randn(2, 5, q.in_features)
    torch.testing.assert_close(q(x), x @ q.weight.T)
    torch.testing.assert_close(k(y), y @ k.weight.T)  # not the group's input: its own product
    torch.testing.assert_close(k(x), x @ k.weight.T)


def test_shared_inputs_train_under_gradient_checkpointing(tiny):
    model = lora_model(tiny, lora_dropout=0.1)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    ids = torch.randint(0, 100, (2, 24))
    model(input_ids=ids, labels=ids).loss.backward()  # recomputation must take the forward's path
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)


def test_siblings_share_their_a_product_when_peft_casts_their_input(tiny):
    """A float32 adapter on a bfloat16 layer: PEFT hands each A layer its own cast copy of the input;
    the group still computes once (one saved input, one mask draw) and each member gets its product."""
    model = lora_model(tiny, lora_dropout=1e-6).train()
    attention = model.base_model.model.model.layers[0].self_attn
    for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
        proj.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 5, attention.q_proj.in_features, dtype=torch.bfloat16)
    draws = []
    original = torch.Tensor.random_

    def counting(self, *args, **kwargs):
        draws.append(self.numel())
        return original(self, *args, **kwargs)

    torch.Tensor.random_ = counting
    try:
        parts = [proj(x) for proj in (attention.q_proj, attention.k_proj, attention.v_proj)]
    finally:
        torch.Tensor.random_ = original
    assert len(draws) == 1  # one mask for the three layers
    for proj, part in zip((attention.q_proj, attention.k_proj, attention.v_proj), parts):
        a, b = proj.lora_A["default"], proj.lora_B["default"]
        expected = proj.base_layer(x) + (b(x.float() @ a.weight.T) * proj.scaling["default"]).to(x.dtype)
        torch.testing.assert_close(part, expected, rtol=2e-2, atol=2e-2)
