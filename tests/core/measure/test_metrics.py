"""Each metric against a value computed by hand."""

from __future__ import annotations

import math

import pytest

from kbit.core.data.examples import Example
from kbit.core.measure.generation import render_prompt
from kbit.core.measure.metrics import completion_loss, linear_weight_bits, memory_footprint, task_scores

EXAMPLES = [
    Example(prompt=[("user", "What is 12 + 30?")], completion="42", answers=["42"]),
    Example(prompt=[("user", "What is 99 - 9?")], completion="90", answers=["90"]),
    Example(prompt=[("system", "Be brief."), ("user", "What is 10 + 10?")], completion="20", answers=["20"]),
]


@pytest.fixture(scope="module")
def loaded(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny)


def test_completion_loss_matches_a_manual_per_example_computation(loaded):
    import torch

    model, tokenizer = loaded
    total, count = 0.0, 0
    for example in EXAMPLES:
        prompt = tokenizer(render_prompt(tokenizer, example), add_special_tokens=False)["input_ids"]
        answer = tokenizer(example.completion + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        with torch.no_grad():
            mean = float(model(input_ids=ids, labels=labels).loss)  # HF: mean over the answer tokens
        total += mean * len(answer)
        count += len(answer)
    # batch_size=2 pads the batches, which must not change anything
    result = completion_loss(model, tokenizer, EXAMPLES, batch_size=2)
    assert result["tokens"] == count == 3 * 3  # two digits + EOS each, one character per token
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert len(result["per_example"]) == 3


def test_long_answers_are_scored_in_smaller_batches_and_up_to_the_context(loaded, monkeypatch):
    import kbit.core.measure.metrics as metrics

    model, tokenizer = loaded
    long = [*EXAMPLES, Example(prompt=[("user", "Spell it out.")], completion="x" * 5000, answers=["x"])]
    whole = completion_loss(model, tokenizer, long, batch_size=4)
    monkeypatch.setattr(metrics, "LOGITS_BYTES", 1)  # one row a batch
    alone = completion_loss(model, tokenizer, long, batch_size=4)
    assert alone["loss"] == pytest.approx(whole["loss"], rel=1e-5) and alone["per_example"][:3] == pytest.approx(
        whole["per_example"][:3], rel=1e-5)
    short = sum(len(metrics.encode_example(tokenizer, e)[0]) for e in EXAMPLES)
    assert whole["input_tokens"] == short + model.config.max_position_embeddings  # the 5000-character answer cut at 512


def test_exact_match_and_f1_on_fixed_strings():
    squad = [Example(prompt=[("user", "q")], completion="cat sat", answers=["cat sat", "a cat"]),
             Example(prompt=[("user", "q")], completion="a dog barks", answers=["a dog barks"])]
    per, means = task_scores("squad", ["The cat sat.", "dog"], squad)
    assert per[0] == {"exact_match": 1.0, "f1": 1.0}
    # "dog" vs "dog barks" (articles dropped): precision 1, recall 1/2 -> F1 2/3
    assert per[1]["exact_match"] == 0.0 and per[1]["f1"] == pytest.approx(2 / 3)
    assert means == {"exact_match": 0.5, "f1": pytest.approx(5 / 6), "exact_match_hits": 1,
                     "exact_match_ci95": [0.0945, 0.9055]}  # with its 95% interval, as every printed rate
    per, means = task_scores("arithmetic", ["The answer is 1,234.", "12", "no idea"],
                             [Example(prompt=[("user", "q")], completion=a, answers=[a]) for a in ("1234", "13", "5")])
    assert [p["exact_match"] for p in per] == [1.0, 0.0, 0.0] and means["exact_match"] == pytest.approx(1 / 3)


def test_fp32_model_is_32_bits_per_weight_and_footprint_counts_every_tensor_once(loaded):
    model, _ = loaded
    bits = linear_weight_bits(model)
    assert bits["bits_per_weight"] == 32
    config = model.config
    # q, o: hidden x hidden; k, v: hidden x hidden/2 (2 of 4 heads); gate, up, down: hidden x intermediate
    attention = config.hidden_size * config.hidden_size * 2 + 2 * config.hidden_size * (config.hidden_size // 2)
    mlp = 3 * config.hidden_size * config.intermediate_size
    per_layer = attention + mlp
    assert bits["linear_weights"] == config.num_hidden_layers * per_layer  # the tied head is left out
    parameters = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert memory_footprint(model) == 4 * parameters + buffers == model.get_memory_footprint()


def test_bf16_model_is_16_bits_per_weight(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.bfloat16)
    assert linear_weight_bits(model)["bits_per_weight"] == 16


def test_nf4_double_quant_layer_is_about_4_127_bits_per_weight():
    import bitsandbytes as bnb
    import torch

    layer = torch.nn.Sequential(
        bnb.nn.Linear4bit(2048, 2048, bias=False, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    ).to("cpu")
    weight = layer[0].weight
    assert weight.quant_state is not None and weight.quant_state.nested
    # 4 bits packed + one uint8 absmax per 64 weights + one fp32 absmax per 256 blocks (+ loaded code tables)
    expected = 4 + 8 / 64 + 32 / (64 * 256)
    bits = linear_weight_bits(layer)
    assert bits["linear_weights"] == 2048 * 2048
    assert bits["bits_per_weight"] == pytest.approx(expected, abs=0.005)
    assert memory_footprint(layer) == pytest.approx(2048 * 2048 * expected / 8, rel=0.001)
    assert memory_footprint(layer) > weight.numel()  # quant state counted beyond the packed bytes


def test_int8_row_scales_count_before_and_after_the_first_forward_pass():
    """bitsandbytes' Linear8bitLt keeps one float32 scale per row (SCB) on its weight, then on ``layer.state``."""
    import bitsandbytes as bnb
    import torch

    layer = torch.nn.Sequential(bnb.nn.Linear8bitLt(256, 128, bias=False, has_fp16_weights=False)).to("cpu")
    expected = 8 + 32 / 256  # an int8 per weight + a float32 scale per row of 256
    before = (linear_weight_bits(layer)["bits_per_weight"], memory_footprint(layer))
    layer(torch.randn(2, 256, dtype=torch.float16))
    assert layer[0].weight.SCB is None and layer[0].state.SCB is not None  # moved, as bitsandbytes does
    assert before == (linear_weight_bits(layer)["bits_per_weight"], memory_footprint(layer))
    assert before[0] == pytest.approx(expected) and before[1] == 128 * 256 + 128 * 4
