"""The training FLOP count against torch's own FLOP counter on a real LoRA step of the tiny model."""

from __future__ import annotations

import attrs
import pytest
import torch

from kbit.core.measure.throughput import StepWork, batch_work, model_shape, speed_figures, step_flops


@pytest.fixture
def lora_model(tiny):
    from peft import LoraConfig, get_peft_model

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.0))
    model.enable_input_require_grads()  # as training prepares it: the first layer's input gradient is computed
    return model


def _batch(lengths: list[int], prompt: int, vocab: int) -> dict[str, torch.Tensor]:
    width = max(lengths)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_count_matches_torch_flop_counter_on_a_lora_step(lora_model):
    from torch.utils.flop_counter import FlopCounterMode

    from kbit.core.train.loss import labelled_loss

    length = 24
    inputs = _batch([length], prompt=10, vocab=lora_model.config.vocab_size)
    with FlopCounterMode(display=False) as counter:
        labelled_loss(lora_model, inputs).loss.backward()
    tokens, head, pairs = (int(v) for v in batch_work(inputs, labelled_head=True))
    assert (tokens, head, pairs) == (length, length - 10, length * (length + 1))
    # Eager attention multiplies the whole L×L square (the mask hides the upper half); kbit counts the
    # causal half, L(L+1)/2 pairs per example, as the work done. Counted as the square, both agree.
    as_square = StepWork(tokens=tokens, head_positions=head, attention_pairs=2 * length * length, checkpointing=False)
    rotary = 2 * (lora_model.config.head_dim // 2) * length  # RoPE's angles, an outer product: not counted
    assert step_flops(model_shape(lora_model), as_square) + rotary == counter.get_total_flops()


def test_shape_of_a_lora_model(lora_model):
    shape = model_shape(lora_model)
    config = lora_model.config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner
    assert shape.frozen_linear_weights == layers * per_layer
    assert shape.trainable_parameters == sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
    assert shape.head_weights == config.vocab_size * hidden and not shape.head_trainable
    assert (shape.layers, shape.attention_width) == (layers, hidden)


def test_checkpointing_adds_one_forward_of_the_body(lora_model):
    shape = model_shape(lora_model)
    plain = StepWork(tokens=100, head_positions=40, attention_pairs=5000, checkpointing=False)
    recomputed = attrs.evolve(plain, checkpointing=True)
    forward = (2 * (shape.frozen_linear_weights + shape.trainable_parameters) * 100
               + 2 * shape.attention_width * shape.layers * 5000)
    assert step_flops(shape, recomputed) - step_flops(shape, plain) == forward


def test_padding_free_batch_lengths_from_position_ids():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    inputs = {"input_ids": torch.ones_like(positions), "position_ids": positions,
              "labels": torch.tensor([[-100, 5, 5, -100, 5, -100, -100, 5, 5]])}
    tokens, head, pairs = (int(v) for v in batch_work(inputs, labelled_head=True))
    assert (tokens, head, pairs) == (9, 5, 3 * 4 + 2 * 3 + 4 * 5)
    assert int(batch_work(inputs, labelled_head=False)[1]) == 9  # trl's head: every position


def test_speed_figures_and_mfu(lora_model):
    shape = model_shape(lora_model)
    work = StepWork(tokens=1000, head_positions=300, attention_pairs=40_000, checkpointing=False)
    figures = speed_figures(shape, work, step_seconds=2.0, peak_gflops=100.0)
    achieved = step_flops(shape, work) / 2.0 / 1e9
    assert figures["tokens_per_s"] == 500.0
    assert figures["achieved_gflops"] == round(achieved, 1)
    assert figures["mfu"] == round(achieved / 100.0, 3)
    assert speed_figures(shape, work, step_seconds=2.0, peak_gflops=None)["mfu"] is None
    assert speed_figures(shape, attrs.evolve(work, tokens=0), 2.0, 100.0) == {}  # nothing trained here
