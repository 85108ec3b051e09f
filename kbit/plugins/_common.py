"""Helpers shared by the built-in adapter methods: their common options, extras and model preparation.

Not a plugin (it registers no entry point). Each plugin stays a plain module of hooks that calls
these helpers, so the options every adapter method offers are spelled once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit import MergePolicy, Option, OptionSchema
from kbit.core.adapters import adapter_extras
from kbit.core.device import DeviceInfo, resolve_compute_dtype
from kbit.core.options import DTYPES, boolean, choice


def training_options(*, merge: bool = True) -> OptionSchema:
    """compute_dtype, gradient_checkpointing, merge_after_train and merge_dtype with a method's defaults."""
    return OptionSchema(
        (
            Option("compute_dtype", "auto", choice(*DTYPES), "matmul dtype: auto = bf16 on a GPU that has it, fp32 on CPU"),
            Option("gradient_checkpointing", "auto", choice("auto", "true", "false"),
                   "recompute activations in backward to save memory: auto = on a GPU only (it costs ~40% step time on CPU)"),
            Option("merge_after_train", merge, boolean, "merge the adapter into a full model after training"),
            Option("merge_dtype", "auto", choice(*DTYPES), "dtype of the merged model: auto = the compute dtype"),
        )
    )


def training_extras(values: Mapping[str, Any], device: DeviceInfo) -> dict[str, Any]:
    """The extras every adapter method records: resolved dtypes, checkpointing, merge choice, adapter."""
    return {
        "compute_dtype": resolve_compute_dtype(values["compute_dtype"], device),
        "gradient_checkpointing": values["gradient_checkpointing"] == "true"
        or (values["gradient_checkpointing"] == "auto" and device.kind == "cuda"),
        "merge_after_train": values["merge_after_train"],
        "merge_dtype": resolve_compute_dtype(values["merge_dtype"], device),
        "adapter": adapter_extras(values),
    }


def prepare_for_adapter(model: Any, spec: Any, *, kbit_base: bool) -> Any:
    """Freeze the base and set up gradient checkpointing.

    ``kbit_base``: the base holds k-bit weights; then ``peft.prepare_model_for_kbit_training`` also
    upcasts the remaining half-precision parameters (norms, embeddings) to float32 for stability.
    A full-precision base is left in its compute dtype.
    """
    checkpointing = bool(spec.extras["gradient_checkpointing"])
    kwargs = {"use_reentrant": False} if checkpointing else None
    if kbit_base:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=kwargs)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.enable_input_require_grads()
    return model


def merge_or_keep(spec: Any, *, base: str, reason: str = "") -> MergePolicy:
    """Merge into ``base`` in the merge dtype, unless the user turned merging off."""
    if not spec.extras["merge_after_train"]:
        return MergePolicy(action="keep_adapter", reason="merge_after_train=false")
    return MergePolicy(action="merge", base=base, dtype=spec.extras["merge_dtype"], reason=reason)
