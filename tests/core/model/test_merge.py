"""``computing_in``: the merge check runs a bf16-trained model in float32, then puts it back as it was."""

import pytest
import torch

from kbit.core.model.merge import computing_in
from kbit.core.methods.registry import get_method
from kbit.core.train.sizing import concrete_adapter_spec


def test_a_bf16_model_computes_in_float32_inside_and_is_restored_bit_for_bit(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16).to(torch.float32).eval()
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


def test_four_bit_layers_compute_in_float32_inside_and_their_packed_weights_are_untouched(tiny):
    import bitsandbytes as bnb

    from kbit.core.model.bases import load_base

    method = get_method("qlora")
    spec = concrete_adapter_spec(method.resolve_spec({"compute_dtype": "bfloat16"}, None), rank=4)
    model = load_base(method, spec, str(tiny))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    packed = {id(m): (m.weight.dtype, m.weight.data.clone()) for m in layers}
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    with computing_in(model, "float32"):
        assert {m.compute_dtype for m in layers} == {torch.float32}
        assert all(m.weight.dtype == packed[id(m)][0] for m in layers)
    assert {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert all(torch.equal(m.weight.data, packed[id(m)][1]) for m in layers)


def test_the_trainers_autocast_wrapper_is_lifted_inside_and_put_back(tiny):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
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


def _figures(error: float, effect: float, top1: float = 1.0, largest: float = 10.0) -> dict[str, float]:
    return {"max_abs_logit_diff": error, "top1_agreement": top1, "adapter_effect": effect, "max_abs_logit": largest,
            "positions": 100}


def test_the_merge_bound_is_a_share_of_the_adapters_effect_set_by_the_precision_compared():
    from kbit.core.model.merge import merge_tolerance

    assert merge_tolerance("float32", "float32") == 1e-3
    assert merge_tolerance("bfloat16", "float32") == torch.finfo(torch.bfloat16).eps  # one rounding of the base
    assert merge_tolerance("float32", "float16") == 16 * torch.finfo(torch.float16).eps  # the merged model computes in it
    assert merge_tolerance("float16", "bfloat16") == 16 * torch.finfo(torch.bfloat16).eps


def test_a_merge_whose_top1_agrees_but_whose_logits_moved_more_than_the_bound_fails_naming_the_method():
    from kbit.core.model.merge import MergeCheckFailed, check_fidelity

    check_fidelity(_figures(9.5e-5, 34.0), 0.99, "qlora", "the dequantized base", tolerance=1e-3)  # an honest merge
    with pytest.raises(MergeCheckFailed) as failed:
        check_fidelity(_figures(0.08, 1.5, largest=1.0), 0.99, "rtn-x", "the dequantized base", tolerance=1e-3)
    message = str(failed.value)
    assert "\n" not in message and "method 'rtn-x'" in message and "5.33% of their scale (1.5: the larger of" in message
    assert "--merge-tolerance" in message and "dequantize_base must return exactly the weights" in message


def test_an_adapter_that_barely_changes_the_logits_is_judged_against_their_size_instead():
    from kbit.core.model.merge import MergeCheckFailed, check_fidelity

    # rounding noise of 1e-4 on logits of size 10 passes with an adapter effect of 0 (an untrained adapter) ...
    check_fidelity(_figures(1e-4, 0.0, largest=10.0), 0.99, "m", "b", tolerance=1e-3)
    with pytest.raises(MergeCheckFailed, match="of their scale"):  # ... a change of 0.02 does not
        check_fidelity(_figures(0.02, 0.0, largest=10.0), 0.99, "m", "b", tolerance=1e-3)


def test_without_a_bound_only_top1_is_checked():
    from kbit.core.model.merge import MergeCheckFailed, check_fidelity

    check_fidelity(_figures(5.0, 1.0), 0.99, "m", "b")
    with pytest.raises(MergeCheckFailed, match="top-1 predictions"):
        check_fidelity(_figures(5.0, 1.0, top1=0.9), 0.99, "m", "b", tolerance=1e-3)


def test_base_dtype_reads_the_weights_the_adapter_wraps(tiny):
    from peft import LoraConfig, get_peft_model

    from kbit.core.model.merge import base_dtype
    from kbit.core.model.sources import load_causal_lm

    for dtype in ("float32", "bfloat16"):
        model = get_peft_model(load_causal_lm(str(tiny), dtype=dtype), LoraConfig(r=4, target_modules="all-linear"))
        assert base_dtype(model) == dtype
