"""``computing_in``: the merge check runs a bf16-trained model in float32, then puts it back as it was."""

import torch

from kbit.core.merge import computing_in
from kbit.core.registry import get_method
from kbit.core.sizing import concrete_adapter_spec


def test_a_bf16_model_computes_in_float32_inside_and_is_restored_bit_for_bit(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).to(torch.float32).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.tensor([[5, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        with computing_in(model, "float32"):
            assert {p.dtype for p in model.parameters()} == {torch.float32}
            inside = model(input_ids=ids).logits
        expected = reference(input_ids=ids).logits
        outside = model(input_ids=ids).logits
    assert inside.dtype == torch.float32 and torch.equal(inside, expected)  # the same weights, computed in fp32
    assert outside.dtype == torch.bfloat16 and not torch.equal(outside.float(), expected)
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.bfloat16 and torch.equal(parameter, before[name]), name


def test_four_bit_layers_compute_in_float32_inside_and_their_packed_weights_are_untouched(tiny_model):
    import bitsandbytes as bnb

    from kbit.core.bases import load_base

    method = get_method("qlora")
    spec = concrete_adapter_spec(method.resolve_spec({"compute_dtype": "bfloat16"}, None), rank=4)
    model = load_base(method, spec, str(tiny_model))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    packed = {id(m): (m.weight.dtype, m.weight.data.clone()) for m in layers}
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    with computing_in(model, "float32"):
        assert {m.compute_dtype for m in layers} == {torch.float32}
        assert all(m.weight.dtype == packed[id(m)][0] for m in layers)
    assert {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert all(torch.equal(m.weight.data, packed[id(m)][1]) for m in layers)


def test_the_trainers_autocast_wrapper_is_lifted_inside_and_put_back(tiny_model):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    # accelerate keeps one global state per process; earlier tests' trainers set it without mixed precision.
    saved = dict(AcceleratorState._shared_state), dict(PartialState._shared_state)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare_model(model)  # what the Trainer leaves behind
    finally:
        for state, before in zip((AcceleratorState, PartialState), saved):
            state._shared_state.clear()
            state._shared_state.update(before)
    ids = torch.tensor([[5, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        expected = prepared.__dict__["_original_forward"](input_ids=ids).logits
        wrapped = prepared(input_ids=ids).logits
        with computing_in(prepared, "float32"):
            inside = prepared(input_ids=ids).logits
        after = prepared(input_ids=ids).logits
    assert not torch.equal(wrapped, expected)  # the wrapper computes in bf16
    assert torch.equal(inside, expected)
    assert torch.equal(after, wrapped)
