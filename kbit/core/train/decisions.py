"""What kbit decided for a run where the user left the choice to it (``auto``), and why.

Each decision is recorded under ``decisions`` in ``kbit.json`` as ``{"value", "requested", "reason"}``
(plus the figures it was made from), so a run says why it trained in bf16 or without padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.core.system.device import DeviceInfo, decide_compute_dtype


def compute_dtype_decision(options: Mapping[str, Any], device: DeviceInfo, chosen: str) -> dict[str, Any]:
    """The compute dtype ``chosen`` by the method's spec, with the reason ``decide_compute_dtype`` gives
    for the requested value (``auto`` unless ``-o compute_dtype=...``) on ``device``."""
    requested = str(options.get("compute_dtype", "auto"))
    decision = decide_compute_dtype(requested, device)
    reason = decision.reason if decision.value == chosen else f"set by the method (auto would be {decision.value})"
    return {"value": chosen, "requested": requested, "reason": reason}
