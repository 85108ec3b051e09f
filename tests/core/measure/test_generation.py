"""Answers end at the end-of-turn token under a budget from the task; speed is measured on forced tokens."""

from __future__ import annotations

import pytest

from kbit.core.data.examples import Example
from kbit.core.measure.budget import derived_cap, end_of_turn_ids, generation_budget
from kbit.core.measure.generation import decode_speed, generate_answers

PROMPTS = [Example(prompt=[("user", f"What is {i} + 1?")], completion=str(i + 1), answers=[str(i + 1)]) for i in range(5)]


@pytest.fixture(scope="module")
def loaded(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny)


def _always(model, token_id: int):
    """Make the real model prefer ``token_id`` at every position (a bias on its output logits)."""
    def hook(module, inputs, output):
        output[..., token_id] += 1e4
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


def test_the_cap_follows_the_training_completions():
    assert derived_cap([3] * 100) == (16, "95th percentile of 100 completion lengths = 3 tokens × 1.5 = 5, bounded to 16…1024")
    # of 1..100 the 95th percentile lies between 95 and 96 (numpy: index 94.05); the length above it is taken
    cap, detail = derived_cap(list(range(1, 101)))
    assert cap == 144 and detail == "95th percentile of 100 completion lengths = 96 tokens × 1.5 = 144"
    assert derived_cap([5000])[0] == 1024


def test_budget_is_measured_in_tokens_of_the_completions_or_set_by_the_user(loaded):
    _, tokenizer = loaded
    long = [Example(prompt=[("user", "q")], completion="x" * 40)] * 10  # one token per character here
    budget = generation_budget(tokenizer, long)
    assert budget.max_new_tokens == 62 and budget.chosen_by == "training completions"  # (40 + end of turn) × 1.5
    assert budget.stop_tokens == ("<|im_end|>",)
    user = generation_budget(tokenizer, long, explicit=7)
    assert (user.max_new_tokens, user.chosen_by) == (7, "--max-new-tokens")


def test_a_derived_budget_leaves_half_the_models_context_to_the_prompt(loaded):
    model, tokenizer = loaded
    context = model.config.max_position_embeddings
    longest = [Example(prompt=[("user", "q")], completion="x" * (2 * context))] * 10
    budget = generation_budget(tokenizer, longest, model=model)
    assert budget.max_new_tokens == context // 2
    assert budget.detail.endswith(f"bounded to half the model's context of {context} tokens")


def test_end_of_turn_comes_from_the_tokenizer_the_model_and_the_chat_template(loaded):
    model, tokenizer = loaded
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(tokenizer, model) == [im_end]
    model.generation_config.eos_token_id = [im_end, 5]
    try:
        assert end_of_turn_ids(tokenizer, model) == [im_end, 5]
    finally:
        model.generation_config.eos_token_id = im_end


def test_answers_stop_at_the_end_of_turn_token(loaded):
    model, tokenizer = loaded
    handle = _always(model, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    try:
        answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=20, batch_size=2)
    finally:
        handle.remove()
    assert answers.texts == [""] * 5 and answers.new_tokens == [1] * 5 and answers.cut == 0


def test_answers_that_never_end_are_cut_at_the_budget_and_counted(loaded):
    model, tokenizer = loaded
    handle = _always(model, tokenizer.convert_tokens_to_ids("7"))
    try:
        answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    finally:
        handle.remove()
    assert answers.texts == ["777777"] * 5 and answers.new_tokens == [6] * 5 and answers.cut == 5


def test_speed_is_measured_on_exactly_the_forced_number_of_tokens_even_when_answers_end_at_once(loaded):
    model, tokenizer = loaded
    handle = _always(model, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    try:
        speed = decode_speed(model, tokenizer, PROMPTS, new_tokens=12, batch_size=4)
    finally:
        handle.remove()
    assert speed["prompts"] == 4 and speed["tokens"] == 4 * 12 and speed["tokens_per_s"] > 0


def test_a_frozen_head_sees_contiguous_hidden_states_and_answers_do_not_change(loaded):
    # torch.matmul copies a frozen weight once per batch row for a strided 3-D input (see _generate)
    model, tokenizer = loaded
    head = model.get_output_embeddings()
    seen = []
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[0].is_contiguous()))
    try:
        model.requires_grad_(False)
        frozen = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=5)
        model.requires_grad_(True)
        trainable = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=5)
    finally:
        handle.remove()
    assert seen and all(seen)
    assert frozen.texts == trainable.texts and not head._forward_pre_hooks


def test_answer_batches_are_sized_by_the_kv_cache_from_the_model_shape_and_prompts(loaded, monkeypatch):
    import kbit.core.measure.generation as generation
    from kbit.core.measure.generation import answer_batch_size, render_prompt

    model, tokenizer = loaded
    assert answer_batch_size(model, tokenizer, PROMPTS, max_new_tokens=16) == len(PROMPTS)  # all in one batch
    assert answer_batch_size(model, tokenizer, PROMPTS * 40, max_new_tokens=16) == generation.MAX_ANSWER_BATCH
    config = model.config
    longest = max(len(tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]) for e in PROMPTS)
    row = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4 * (longest + 16)
    monkeypatch.setattr(generation, "ANSWER_CACHE_BYTES", 3 * row)  # room for three rows' cache
    assert answer_batch_size(model, tokenizer, PROMPTS, max_new_tokens=16) == 3
    model.to(dtype=__import__("torch").bfloat16)  # the dtype does not change the size: every scorer agrees
    try:
        assert answer_batch_size(model, tokenizer, PROMPTS, max_new_tokens=16) == 3
    finally:
        model.float()
    auto = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=4)
    assert auto.texts == generate_answers(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=3).texts
