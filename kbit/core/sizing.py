"""Automatic sizing: adapter rank and micro-batch chosen from the model's size and device memory."""

from __future__ import annotations

import attrs

from kbit.core.spec import QuantizationSpec


def concrete_adapter_spec(spec: QuantizationSpec, rank: int) -> QuantizationSpec:
    """``spec`` with an adapter rank of 'auto' replaced by ``rank`` (an explicit rank is kept)."""
    adapter = dict(spec.extras.get("adapter", {}))
    if adapter.get("r") != "auto":
        return spec
    adapter["r"] = rank
    return attrs.evolve(spec, extras={**spec.extras, "adapter": adapter})
