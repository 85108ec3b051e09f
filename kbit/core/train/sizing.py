"""Automatic sizing: adapter rank, micro-batch and gradient checkpointing chosen from the model's size
and device memory."""

from __future__ import annotations

import attrs

from kbit.core.system.device import Decision
from kbit.core.contract.spec import QuantizationSpec

CHECKPOINT_ABOVE = 0.5  # checkpointing turns on when a step without it would need more than this share of free memory


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

    CPU batches are capped at 16: there compute, not memory, limits throughput.
    """
    per_sample = activation_bytes_per_sample(hidden_size=hidden_size, layers=layers, vocab_size=vocab_size,
                                             length=max_length, checkpointing=checkpointing)
    budget = max(0, memory_bytes // 2 - model_bytes)
    cap = 16 if device_kind == "cpu" else 128
    batch = 1
    while batch * 2 <= cap and per_sample * batch * 2 <= budget:
        batch *= 2
    return batch, (
        f"batch={batch}: ~{per_sample / 2**20:.0f} MiB activations per sample at max_length={max_length}, "
        f"budget {budget / 2**30:.1f} GiB (half of {memory_bytes / 2**30:.1f} GiB minus the model), cap {cap} on {device_kind}"
    )


def activation_bytes_per_sample(*, hidden_size: int, layers: int, vocab_size: int, length: int, checkpointing: bool) -> int:
    """Estimated activation memory of one training sequence of ``length`` tokens (fp32, an upper bound).

    With checkpointing, one hidden state per layer plus one layer's full activations (~34 hidden-sized
    tensors, Korthikanti et al. 2022); without, every layer's; plus fp32 logits and their gradient.
    """
    bytes_per = 4
    per_layer_full = 34 * length * hidden_size * bytes_per
    stored = layers * length * hidden_size * bytes_per + per_layer_full if checkpointing else layers * per_layer_full
    return stored + 2 * length * vocab_size * bytes_per


def decide_checkpointing(
    requested: str, *, hidden_size: int, layers: int, vocab_size: int, length: int, batch_size: int,
    model_bytes: int, free_bytes: int,
) -> tuple[Decision, dict[str, int]]:
    """Gradient checkpointing for ``requested`` ("auto", "true" or "false") and the estimates behind it.

    "auto" turns it on when the model plus a micro-batch's activations without checkpointing
    (sequences of ``length`` tokens: the longest training example, at most --max-length) would take more
    than ``CHECKPOINT_ABOVE`` of the ``free_bytes`` of memory; otherwise the step is faster without it
    (recomputing activations makes each step slower).
    """
    def need(checkpointing: bool) -> int:
        return model_bytes + batch_size * activation_bytes_per_sample(
            hidden_size=hidden_size, layers=layers, vocab_size=vocab_size, length=length, checkpointing=checkpointing)

    estimates = {"estimated_bytes_without": need(False), "estimated_bytes_with": need(True), "free_bytes": free_bytes}
    if requested in ("true", "false"):
        return Decision(requested == "true", "requested"), estimates
    without, mib = estimates["estimated_bytes_without"], 2**20
    on = without > CHECKPOINT_ABOVE * free_bytes
    reason = (f"auto: without it a step needs ~{without / mib:.0f} MiB (model + batch {batch_size} x {length} tokens), "
              f"{'over' if on else 'within'} {CHECKPOINT_ABOVE:.0%} of the {free_bytes / mib:.0f} MiB free"
              + ("" if on else "; recomputing would only cost time"))
    return Decision(on, reason), estimates
