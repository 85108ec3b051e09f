"""QA-LoRA as a plain PEFT LoRA (``AdapterSettings.qa_group_size``): its update stays constant within
each group of input features through training, so it merges into per-block offsets exactly."""

import pytest
import torch

from kbit.core.model.adapters import attach_adapter
from kbit.core.errors import ConfigError
from kbit.plugin import AdapterSettings, QuantizationSpec, TrainingSettings


def _model(hidden=64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=hidden, intermediate_size=2 * hidden,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))


def _spec(group=32):
    return QuantizationSpec(method="toy", adapter=AdapterSettings(r=4, lora_dropout=0.1, qa_group_size=group),
                            training=TrainingSettings())


def _group_constant(tensor, group, atol=0.0):
    rows, width = tensor.shape
    blocks = tensor.reshape(rows, width // group, group)
    return bool(((blocks - blocks[..., :1]).abs() <= atol).all())


def test_the_update_stays_group_constant_through_adam_steps_and_merges_blockwise():
    model = _model()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    peft_model = attach_adapter(model, _spec())
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(0, 50, (2, 12))
    peft_model.train()
    for _ in range(3):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lora_a = [m.lora_A["default"].weight for m in peft_model.modules() if hasattr(m, "lora_A")]
    assert len(lora_a) == 7 and all(_group_constant(a.detach(), 32) for a in lora_a)
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_B")]
    assert all(float(m.lora_B["default"].weight.abs().sum()) > 0 for m in layers)
    assert all(_group_constant(m.get_delta_weight("default").detach(), 32) for m in layers)  # exactly
    before = {n: p.detach().clone() for n, p in _model().named_parameters()}
    merged = peft_model.merge_and_unload()
    deltas = [merged.get_submodule(n.rsplit(".", 1)[0]).weight.detach() - before[n]
              for n in before if n.endswith("proj.weight")]
    assert all(_group_constant(d, 32, atol=1e-6) for d in deltas)  # up to the rounding of W + ΔW


def test_a_group_size_that_does_not_divide_a_width_is_refused():
    model = _model(hidden=48)  # intermediate 96: 32 divides neither 48 nor 96
    with pytest.raises(ConfigError, match="QA-LoRA group size 32 does not divide the input width"):
        attach_adapter(model, _spec())


def test_qa_lora_is_lora_only():
    with pytest.raises(ValueError, match="qa_group_size .* needs peft_type 'lora'"):
        AdapterSettings(peft_type="dora", qa_group_size=32)
