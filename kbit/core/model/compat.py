"""What differs across the transformers releases kbit supports (pyproject.toml: 5.17 and newer).

After 5.17, transformers renamed gradient checkpointing to activation checkpointing: the model
method and property and the ``TrainingArguments`` fields. The old names still work there but warn,
and go in v6, so each helper uses the new name where it exists and the old one otherwise. CI runs
tests/core/model/test_compat.py with 5.17 (constraints/tested.txt) and with the newest release.
"""

from __future__ import annotations

import dataclasses
from typing import Any

REENTRANT_OFF = {"use_reentrant": False}


def enable_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass instead of keeping them (non-reentrant)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(dict(REENTRANT_OFF))


def checkpointing_enabled(model: Any) -> bool:
    """Whether ``model`` (a transformers model, or a PEFT model around one) recomputes activations."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        try:
            return bool(getattr(model, name))
        except AttributeError:
            continue
    return False


def checkpointing_arguments(arguments_class: type, enabled: bool) -> dict[str, Any]:
    """The ``TrainingArguments`` (or subclass) fields that switch checkpointing on or off."""
    fields = {field.name for field in dataclasses.fields(arguments_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": dict(REENTRANT_OFF) if enabled else None}
