"""Padding-free batches: whether a run's micro-batches are laid out as one row of concatenated
examples (trl's ``padding_free``, position ids restarting at 0 for each example) instead of rows padded
to the longest example.

The layout changes nothing the model learns: each example attends only to itself either way, and
the loss is summed over the same labelled tokens (``tests/core/train/test_padding.py`` compares the
per-example losses). That holds where the attention mask is built by transformers' ``masking_utils``
(``create_causal_mask``): without a 2-D attention mask it reads the packed sequences from the position
ids (``find_packed_sequence_indices``) and makes the mask block-diagonal, for the sdpa, eager and flex
implementations alike; flash attention takes trl's ``cu_seq_lens`` instead. Only without a KV cache
(``use_cache=False``, as trl and ``kbit.core.train.loss`` call the model in training): with one,
transformers assumes a single sequence per row. A model whose code builds
its own mask could let examples attend across their boundary, so it keeps padded batches.

It pays only where there is padding to drop: the concatenated row has the same real tokens but
attention over the whole row, masked. On the 2-core CPU (fp32, SmolLM2-135M, batch 4, shared and
noisy) a batch with 28% padding trained ~5% faster padding-free, one without padding ~4% slower; so
``auto`` turns it on from ``MIN_PADDING`` of expected padding.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import Any

from kbit.core.system.device import Decision
from kbit.core.errors import ConfigError

MIN_PADDING = 0.15  # expected share of padding tokens from which auto lays batches out padding-free
MASK_BUILT_FROM_POSITIONS = ("sdpa", "eager", "flex_attention")  # through masking_utils.create_causal_mask
VARLEN = ("flash_attention_2", "flash_attention_3")  # take trl's cu_seq_lens directly


def expected_padding(lengths: Sequence[int], batch_size: int, seed: int = 0, draws: int = 8) -> float:
    """The expected share of padding tokens in padded micro-batches of ``batch_size`` examples drawn at
    random from examples of these token ``lengths`` (the Trainer shuffles), estimated over ``draws``
    shuffles with a fixed seed."""
    if not lengths:
        return 0.0
    rng, real, padded = random.Random(seed), 0, 0
    order = list(lengths)
    for _ in range(draws):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            real, padded = real + sum(batch), padded + max(batch) * len(batch)
    return 1 - real / padded


def attention_separates_packed_examples(model: Any) -> tuple[bool, str]:
    """Whether ``model`` (a causal LM, or a PEFT model around one) keeps concatenated examples apart
    given only their position ids, and what that was read from."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    implementation = getattr(lm.config, "_attn_implementation", None)
    if implementation in VARLEN:
        return True, f"{implementation} takes the example boundaries (cu_seq_lens)"
    backbone = getattr(lm, "base_model", lm)
    modules = {type(lm).__module__, type(backbone).__module__}
    uses_masking_utils = all(getattr(sys.modules.get(name), "create_causal_mask", None) is not None for name in modules)
    if implementation in MASK_BUILT_FROM_POSITIONS and uses_masking_utils:
        return True, f"{implementation} attention with transformers' create_causal_mask (block-diagonal from position ids)"
    return False, (f"{type(lm).__name__} with {implementation} attention does not build its mask through transformers' "
                   "create_causal_mask, so concatenated examples could attend to each other")


def decide_padding_free(requested: str, *, packing: bool, longest: int, max_length: int, padding: float,
                        attention: tuple[bool, str]) -> Decision:
    """Padding-free or padded batches for ``requested`` ("auto", "true" or "false"), given the longest
    example in tokens, the expected ``padding`` share and whether the attention keeps examples apart.

    "true" where it would not be correct raises ``ConfigError`` saying why. trl does not cut examples
    in a padding-free batch, so every one must fit ``max_length``.
    """
    safe, why = attention
    if packing:
        return Decision(False, "--packing lays out its own padding-free bins")
    if requested == "false":
        return Decision(False, "requested")
    if longest > max_length:
        why = (f"the longest example has {longest} tokens, over --max-length {max_length}; padded batches cut it, "
               "padding-free ones would not")
        safe = False
    if not safe:
        if requested == "true":
            raise ConfigError(f"--padding-free true cannot be honoured: {why}; use --padding-free auto")
        return Decision(False, why)
    if requested == "true":
        return Decision(True, "requested")
    if padding < MIN_PADDING:
        return Decision(False, f"auto: padded batches would be only {padding:.0%} padding (padding-free from "
                               f"{MIN_PADDING:.0%}; below that its one long masked row is slower)")
    return Decision(True, f"auto: padded batches would be {padding:.0%} padding; {why}")


def example_lengths(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Token lengths of the training rows (``kbit.core.train.fit.sft_dataset`` rows) as trl tokenizes
    them: the chat template over prompt and completion, or prompt text plus completion text."""
    lengths = []
    for row in rows:
        if isinstance(row["prompt"], list):
            ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
        lengths.append(len(ids))
    return lengths
