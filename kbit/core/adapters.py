"""Adapter settings shared by every adapter-training method, and attaching the adapter.

A method plugin includes ``adapter_options(...)`` in its option schema (with its own defaults and
the PEFT types it supports) and stores ``adapter_extras(values)`` under ``spec.extras["adapter"]``.
kbit builds the PEFT config from that record, so every method trains adapters the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.core.errors import ConfigError
from kbit.core.options import Option, OptionSchema, choice, integer, module_names, number

ADAPTER_KEYS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules")


def adapter_options(
    r: int | str = 64,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: str = "all-linear",
    peft_types: tuple[str, ...] = ("lora",),
) -> OptionSchema:
    """The adapter options with a method's defaults; ``peft_type`` accepts only ``peft_types``."""
    return OptionSchema(
        (
            Option("peft_type", peft_types[0], choice(*peft_types), "adapter type: " + ", ".join(peft_types)),
            Option("r", r, integer(minimum=1, auto=True), "adapter rank, or 'auto' to size it from the model and memory"),
            Option("lora_alpha", lora_alpha, number(minimum=0), "LoRA scaling numerator (scale = lora_alpha / r)"),
            Option("lora_dropout", lora_dropout, number(minimum=0, below=1), "dropout on the adapter input"),
            Option("target_modules", target_modules, module_names, "'all-linear' or comma-separated module names"),
        )
    )


def adapter_extras(values: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter record stored in ``spec.extras["adapter"]``, taken from resolved option values."""
    return {key: values[key] for key in ADAPTER_KEYS}


def adapter_settings(spec: Any) -> dict[str, Any]:
    """The adapter record of ``spec``; raises ``ConfigError`` when the method trains no adapter."""
    settings = spec.extras.get("adapter")
    if not isinstance(settings, Mapping):
        raise ConfigError(f"method '{spec.method}' trains no adapter (its spec has no extras['adapter'])")
    return dict(settings)


def build_peft_config(spec: Any) -> Any:
    """The PEFT config for ``spec``'s adapter (LoRA, DoRA or VeRA) on a causal LM."""
    from peft import LoraConfig, TaskType, VeraConfig

    settings = adapter_settings(spec)
    if settings["r"] == "auto":
        raise ConfigError("adapter rank 'auto' must be resolved before building the adapter (see kbit.core.sizing)")
    if settings["peft_type"] == "vera":
        return VeraConfig(
            r=settings["r"],
            target_modules=settings["target_modules"],
            vera_dropout=settings["lora_dropout"],
            task_type=TaskType.CAUSAL_LM,
        )
    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings["lora_dropout"],
        target_modules=settings["target_modules"],
        use_dora=settings["peft_type"] == "dora",
        task_type=TaskType.CAUSAL_LM,
    )


def attach_adapter(model: Any, spec: Any) -> Any:
    """Wrap ``model`` (already passed through the method's ``prepare_model``) in a PEFT model."""
    from peft import get_peft_model

    return get_peft_model(model, build_peft_config(spec))
