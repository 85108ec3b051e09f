"""Greedy generation over chat prompts, batched with left padding."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kbit.core.data.examples import Example


def render_prompt(tokenizer: Any, example: Example) -> str:
    """The prompt text the model sees: the chat template with the generation prompt, or plain text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(example.prompt_messages(), tokenize=False, add_generation_prompt=True)
    return "\n".join(content for _, content in example.prompt) + "\n"


def generate_answers(
    model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int = 16, batch_size: int = 16
) -> tuple[list[str], float]:
    """Greedy completions for ``examples`` and the generation speed in new tokens per second."""
    import torch

    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    new_tokens = 0
    start = time.perf_counter()
    try:
        model.eval()
        device = next(model.parameters()).device
        for begin in range(0, len(examples), batch_size):
            batch = [render_prompt(tokenizer, e) for e in examples[begin : begin + batch_size]]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                generated = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            completions = generated[:, encoded["input_ids"].shape[1] :]
            for row in completions:
                kept = row[row != tokenizer.pad_token_id]
                new_tokens += int(kept.numel())
                outputs.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = previous_side
    elapsed = time.perf_counter() - start
    return outputs, (new_tokens / elapsed if elapsed > 0 else 0.0)
