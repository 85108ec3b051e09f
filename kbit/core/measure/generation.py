"""Greedy generation over chat prompts, batched with left padding: answers, and a fixed-length speed run."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from kbit.core.errors import ConfigError
from kbit.core.data.examples import Example

# Prompts per generate() call wherever kbit scores answers (kbit train's before/after and variants, kbit
# eval, the export check's reference) are chosen by ``answer_batch_size``: left padding changes with the
# batch, and with it the last bits of the logits and so, on near-ties, a greedy answer, so every scorer
# derives the size from the same things (the model's shape, the prompts, the answer budget), never
# from the dtype or the memory free at the time.
ANSWER_CACHE_BYTES = 2**30  # the KV cache of one batch, counted as float32
MAX_ANSWER_BATCH = 128


def answer_batch_size(model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int) -> int:
    """Prompts per batch for greedy answers: as many as the KV cache of ``ANSWER_CACHE_BYTES`` holds at the
    longest prompt plus ``max_new_tokens``, at most ``MAX_ANSWER_BATCH`` and the number of examples.

    Decoding reads every weight once per new token for the whole batch, so a few large batches read
    them far fewer times than many small ones (``python -m benchmarks.scoring_speed`` measures it).
    """
    if not examples:
        return 1
    from kbit.core.measure.throughput import attention_geometry

    layers, _, kv_heads, head_dim = (max(1, value) for value in attention_geometry(model.config))
    longest = max(len(tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]) for e in examples)
    row_bytes = 2 * layers * kv_heads * head_dim * 4 * (longest + max_new_tokens)
    return max(1, min(MAX_ANSWER_BATCH, len(examples), ANSWER_CACHE_BYTES // max(row_bytes, 1)))


def render_prompt(tokenizer: Any, example: Example) -> str:
    """The prompt text the model sees: the chat template with the generation prompt, or plain text."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(example.prompt_messages(), tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2's TemplateError, raised by the template's own raise_exception
            if type(exc).__name__ != "TemplateError":
                raise
            roles = ", ".join(dict.fromkeys(role for role, _ in example.prompt))
            raise ConfigError(f"the model's chat template refuses a prompt of turns {roles} ({exc}); change those rows "
                              "(a system turn some templates do not take, say) or use another model") from None
    return "\n".join(content for _, content in example.prompt) + "\n"


@attrs.frozen
class Answers:
    """Greedy answers and what it took: new tokens per answer (the end-of-turn token included), how
    many answers reached ``max_new_tokens`` without ending their turn, and the seconds spent."""

    texts: list[str]
    new_tokens: list[int]
    cut: int
    max_new_tokens: int
    seconds: float


def generate_answers(model: Any, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int = 16,
                     batch_size: int | None = None) -> Answers:
    """Greedy completions for ``examples``, each ending at an end-of-turn token or after ``max_new_tokens``,
    ``batch_size`` prompts at a time (default: ``answer_batch_size``).

    The end-of-turn tokens are ``kbit.core.measure.budget.end_of_turn_ids`` of the tokenizer and model;
    an answer's text stops before the first of them.
    """
    import torch

    from kbit.core.measure.budget import end_of_turn_ids

    stops = end_of_turn_ids(tokenizer, model)
    batch_size = batch_size or answer_batch_size(model, tokenizer, examples, max_new_tokens)
    texts: list[str] = []
    lengths: list[int] = []
    cut = 0
    start = time.perf_counter()
    for completions in _generate(model, tokenizer, examples, batch_size, max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=stops or None):
        ended = torch.isin(completions, torch.tensor(stops, device=completions.device)) if stops else torch.zeros_like(completions, dtype=torch.bool)
        for row, row_ended in zip(completions, ended):
            positions = row_ended.nonzero()
            if len(positions):
                end = int(positions[0])
                lengths.append(end + 1)
                kept = row[:end]
            else:
                lengths.append(int(row.numel()))
                kept = row
                cut += int(row.numel()) >= max_new_tokens
            texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    return Answers(texts, lengths, cut, max_new_tokens, time.perf_counter() - start)


def decode_speed(model: Any, tokenizer: Any, examples: Sequence[Example], new_tokens: int = 32,
                 batch_size: int = 8) -> dict[str, Any]:
    """Greedy decoding speed on the first ``batch_size`` prompts, each forced to exactly ``new_tokens``
    new tokens (end-of-turn suppressed), so models that answer at different lengths compare fairly."""
    from kbit.core.measure.budget import end_of_turn_ids

    prompts = list(examples[:batch_size])
    stops = end_of_turn_ids(tokenizer, model)
    start = time.perf_counter()
    produced = sum(int(c.numel()) for c in _generate(model, tokenizer, prompts, batch_size, max_new_tokens=new_tokens,
                                                     min_new_tokens=new_tokens, do_sample=False,
                                                     eos_token_id=stops or None))
    seconds = time.perf_counter() - start
    return {"tokens_per_s": produced / seconds if seconds > 0 else 0.0, "prompts": len(prompts),
            "new_tokens_each": new_tokens, "tokens": produced, "seconds": seconds}


def _generate(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int, **settings: Any):
    """Yield each batch's new-token ids (batch × new tokens), prompts left-padded."""
    import torch

    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        model.eval()
        device = next(model.parameters()).device
        with _contiguous_head_input(model):
            for begin in range(0, len(examples), batch_size):
                batch = [render_prompt(tokenizer, e) for e in examples[begin : begin + batch_size]]
                encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                with torch.no_grad():
                    generated = model.generate(**encoded, pad_token_id=tokenizer.pad_token_id, **settings)
                yield generated[:, encoded["input_ids"].shape[1] :]
    finally:
        tokenizer.padding_side = previous_side


@contextlib.contextmanager
def _contiguous_head_input(model: Any) -> Iterator[None]:
    """Hand the output head contiguous hidden states while generating.

    The prompt's forward pass keeps only the last position (``hidden[:, -1:, :]``, a strided view).
    ``torch.matmul`` folds a 3-D input into one matrix product only when that is free of copies or
    when the weight needs a gradient; for a frozen head (an adapter model) it broadcasts the weight to
    every row instead and copies it: batch × vocabulary × hidden values per batch (905 MB for 16
    SmolLM2 prompts in bf16, 2.3 s of a 4.0 s batch). Copying the hidden rows (16 × 576) avoids that;
    the logits are the same.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]) if args else None)
    try:
        yield
    finally:
        handle.remove()
