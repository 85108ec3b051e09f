"""Adapter settings shared by every adapter-training method, and attaching the adapter.

Plugin authors use ``adapter_options`` + ``training_options`` for their option schema,
``training_extras`` for the spec's extras, ``prepare_for_adapter`` in ``prepare_model`` and
``merge_or_keep`` in ``merge_policy``; the built-in methods do exactly that.

A method plugin includes ``adapter_options(...)`` in its option schema (with its own defaults and
the PEFT types it supports) and stores ``adapter_extras(values)`` under ``spec.extras["adapter"]``.
kbit builds the PEFT config from that record, so every method trains adapters the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.core.compat import REENTRANT_OFF, enable_checkpointing
from kbit.core.device import DeviceInfo, resolve_compute_dtype
from kbit.core.errors import ConfigError
from kbit.core.method_info import MergePolicy
from kbit.core.options import DTYPES, Option, OptionSchema, boolean, choice, integer, module_names, number

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


def training_options(*, merge: bool = True) -> OptionSchema:
    """compute_dtype, gradient_checkpointing, merge_after_train, merge_dtype and adapter_dtype with a method's defaults."""
    return OptionSchema(
        (
            Option("compute_dtype", "auto", choice(*DTYPES), "matmul dtype: auto = bf16 on a GPU that has it, fp32 on CPU"),
            Option("gradient_checkpointing", "auto", choice("auto", "true", "false"),
                   "recompute activations in backward to save memory: auto = on a GPU only (it costs ~40% step time on CPU)"),
            Option("merge_after_train", merge, boolean, "merge the adapter into a full model after training"),
            Option("merge_dtype", "auto", choice(*DTYPES), "dtype of the merged model: auto = the compute dtype"),
            Option("adapter_dtype", "auto", choice(*DTYPES),
                   "dtype of the trained adapter weights: auto = float32 (PEFT's default; Adam keeps small updates), "
                   "unless the method needs one dtype throughout (qlora with a float quant_storage, for FSDP)"),
        )
    )


def training_extras(values: Mapping[str, Any], device: DeviceInfo) -> dict[str, Any]:
    """The extras every adapter method records: resolved dtypes, checkpointing, merge choice, adapter."""
    return {
        "compute_dtype": resolve_compute_dtype(values["compute_dtype"], device),
        "gradient_checkpointing": values["gradient_checkpointing"] == "true"
        or (values["gradient_checkpointing"] == "auto" and device.accelerator),
        "merge_after_train": values["merge_after_train"],
        "merge_dtype": resolve_compute_dtype(values["merge_dtype"], device),
        "adapter_dtype": "float32" if values["adapter_dtype"] == "auto" else values["adapter_dtype"],
        "adapter": adapter_extras(values),
    }


def prepare_for_adapter(model: Any, spec: Any, *, kbit_base: bool) -> Any:
    """Freeze the base and set up gradient checkpointing.

    ``kbit_base``: the base holds k-bit weights; then ``peft.prepare_model_for_kbit_training`` also
    upcasts the remaining half-precision parameters (norms, embeddings) to float32 for stability.
    A full-precision base is left in its compute dtype.
    """
    checkpointing = bool(spec.extras["gradient_checkpointing"])
    kwargs = dict(REENTRANT_OFF) if checkpointing else None
    if kbit_base:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=kwargs)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if checkpointing:
        enable_checkpointing(model)
        model.enable_input_require_grads()
    return model


def merge_or_keep(spec: Any, *, base: str, reason: str = "") -> MergePolicy:
    """Merge into ``base`` in the merge dtype, unless the user turned merging off."""
    if not spec.extras["merge_after_train"]:
        return MergePolicy(action="keep_adapter", reason="merge_after_train=false")
    return MergePolicy(action="merge", base=base, dtype=spec.extras["merge_dtype"], reason=reason)
