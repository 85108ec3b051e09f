"""Automatic sizing: adapter rank and micro-batch chosen from the model's size and device memory."""

from __future__ import annotations

import attrs

from kbit.core.spec import QuantizationSpec


def concrete_adapter_spec(spec: QuantizationSpec, rank: int) -> QuantizationSpec:
    """``spec`` with an adapter rank of 'auto' replaced by ``rank`` (an explicit rank is kept)."""
    if spec.adapter is None or spec.adapter.r != "auto":
        return spec
    return attrs.evolve(spec, adapter=attrs.evolve(spec.adapter, r=rank))


def auto_rank(hidden_size: int) -> tuple[int, str]:
    """A LoRA rank for a model of width ``hidden_size``: about hidden/32, a power of two in [8, 64]."""
    target = max(8, min(64, hidden_size // 32))
    rank = 1 << (target.bit_length() - 1)
    return rank, f"r={rank}: about hidden_size/32 for hidden_size={hidden_size}, as a power of two in [8, 64]"


def auto_batch_size(
    *, hidden_size: int, layers: int, vocab_size: int, max_length: int, model_bytes: int, memory_bytes: int,
    device_kind: str, checkpointing: bool,
) -> tuple[int, str]:
    """The largest power-of-two micro-batch whose estimated activation memory fits in half of what is free.

    Per sample: with checkpointing, one hidden state per layer plus one layer's full activations
    (~34 hidden-sized tensors, Korthikanti et al. 2022); without, every layer's; plus fp32 logits.
    CPU batches are capped at 16: there compute, not memory, limits throughput.
    """
    bytes_per = 4
    per_layer_full = 34 * max_length * hidden_size * bytes_per
    stored = layers * max_length * hidden_size * bytes_per + per_layer_full if checkpointing else layers * per_layer_full
    per_sample = stored + 2 * max_length * vocab_size * bytes_per
    budget = max(0, memory_bytes // 2 - model_bytes)
    cap = 16 if device_kind == "cpu" else 128
    batch = 1
    while batch * 2 <= cap and per_sample * batch * 2 <= budget:
        batch *= 2
    return batch, (
        f"batch={batch}: ~{per_sample / 2**20:.0f} MiB activations per sample at max_length={max_length}, "
        f"budget {budget / 2**30:.1f} GiB (half of {memory_bytes / 2**30:.1f} GiB minus the model), cap {cap} on {device_kind}"
    )
