"""awq: train an adapter on the full-precision base, merge it, then quantize the merged model with AWQ.

AWQ (Lin et al. 2023) scales salient weight channels, chosen from calibration activations, before
rounding, so the channels that matter most lose least. llm-compressor's ``oneshot`` with an
``AWQModifier`` does it and saves a compressed-tensors checkpoint (W4A16 asymmetric by default).

llm-compressor 0.14's AWQ pins its activation cache in page-locked memory unconditionally
(``IntermediatesCache.pin_memory``), which raises "Cannot access accelerator device when none is
available" on a CPU-only torch. Pinning only speeds host-to-GPU copies, so while AWQ runs without an
accelerator, ``unpinned_cache_without_accelerator`` makes exactly that method a no-op.
tests/plugins/test_awq.py fails once upstream stops raising, so the workaround can be removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kbit.plugin import DeviceInfo, MethodInfo, Option, QuantizationSpec, boolean, hookimpl
from kbit.plugins._ptq import PEFT_TYPES, REQUIRES, ptq_options, ptq_spec, quantize_with
from kbit.plugins._ptq import build_quant_config, merge_policy, prepare_model, resolve_for_model  # noqa: F401  (shared hooks)

NAME = "awq"
OPTIONS = ptq_options(
    symmetric=False,
    extra=(Option("duo_scaling", True, boolean, "search scales from both activations and weights (AWQ default)"),),
)


@contextlib.contextmanager
def unpinned_cache_without_accelerator() -> Iterator[None]:
    """Make ``IntermediatesCache.pin_memory`` a no-op while no accelerator is available; else nothing."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="adapter on the full-precision base, merged, then AWQ post-training quantization (llm-compressor)",
        options=OPTIONS,
        requires=REQUIRES,
        peft_types=PEFT_TYPES,
        post_training_quantization=True,
        needs_calibration=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    return ptq_spec(NAME, OPTIONS, options, device, extra_keys=("duo_scaling",))


@hookimpl
def quantize_model(model_dir: Path, spec: QuantizationSpec, calibration: list[str], output_dir: Path) -> None:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    def recipe(**kwargs: Any) -> Any:
        # AWQ searches per-channel scales against the weight scheme of the quantization step after it
        return [AWQModifier(duo_scaling=spec.extras["duo_scaling"]), QuantizationModifier(**kwargs)]

    quantize_with(recipe, model_dir, spec, calibration, output_dir, context=unpinned_cache_without_accelerator)
