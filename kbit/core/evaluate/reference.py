"""A GGUF's next-token logits against a reference model's on the held-out items (``kbit eval FILE.gguf``).

The reference is the run's trained adapter model for a file in a run's ``gguf/`` folder, or
``--reference MODEL`` (``kbit.core.evaluate.loading``). Each item is encoded as its completion loss
sees it (chat prompt + completion + EOS) with the reference's tokenizer, and the same ids go to both
models; the answer positions are those whose next token is a completion token or the EOS.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kbit.core.system.device import DeviceInfo, cpu_logits, release_memory
from kbit.core.measure.agreement import agreement
from kbit.core.measure.budget import context_length
from kbit.core.evaluate.loading import Candidate, load_candidate
from kbit.core.measure.metrics import encode_example

Logits = Callable[[Sequence[int]], Any]  # token ids -> (len(ids), vocab) float32 logits


def answer_mask(length: int, prompt_length: int) -> Any:
    """(length,) bool: the positions whose next token is an answer token (prompt_length - 1 … length - 2)."""
    import torch

    mask = torch.zeros(length, dtype=torch.bool)
    mask[max(prompt_length - 1, 0):length - 1] = True
    return mask


def torch_logits(model: Any) -> Logits:
    """A transformers model as a ``Logits`` function (one unpadded sequence, float32 on the CPU)."""
    import torch

    def logits(ids: Sequence[int]) -> Any:
        with torch.no_grad():
            return cpu_logits(model, {"input_ids": torch.tensor([list(ids)])})[0]

    return logits


def reference_agreement(reference: Candidate, candidate: Logits, items: Sequence[Any],
                        device: DeviceInfo, *, runtime_rounding: bool = True) -> dict[str, Any]:
    """Load ``reference`` and compare ``candidate``'s logits with its logits on ``items``: report-row
    entries (the agreement figures and ``reference``, which model they were measured against).

    ``runtime_rounding=False`` (a candidate computed in float, e.g. transformers' reader of a GGUF):
    a reference trained against llama.cpp's activation rounding computes without it
    (``exact_activations``), as the candidate does."""
    import contextlib

    from kbit.core.model.quantized_linear import exact_activations

    loaded = load_candidate(reference, device)
    try:
        limit = context_length(loaded.model.config)
        sequences = [encode_example(loaded.tokenizer, example, limit) for example in items]
        with contextlib.nullcontext() if runtime_rounding else exact_activations(loaded.model):
            figures = agreement(_triples(torch_logits(loaded.model), candidate, sequences))
    finally:
        del loaded
        gc.collect()
        release_memory(device)
    return {**figures.to_dict(), "reference": f"{reference.label} {reference.display_variant} ({reference.path})"}


def _triples(reference: Logits, candidate: Logits, sequences: Sequence[tuple[list[int], int]]) -> Iterator[tuple[Any, Any, Any]]:
    for ids, prompt_length in sequences:
        yield reference(ids), candidate(ids), answer_mask(len(ids), prompt_length)
