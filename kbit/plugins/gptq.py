"""gptq: train an adapter on the full-precision base, merge it, then quantize the merged model with GPTQ.

GPTQ (Frantar et al. 2022) rounds each layer's weights column by column, correcting the rounding
error with second-order statistics gathered from calibration text. llm-compressor's ``oneshot`` with
a ``GPTQModifier`` does it and saves a compressed-tensors checkpoint (e.g. W4A16, grouped scales)
that ``from_pretrained`` and vLLM load. Calibration text comes from the run's training data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kbit.plugin import DeviceInfo, MethodInfo, Option, QuantizationSpec, hookimpl, number
from kbit.plugins._ptq import GPTQ_DAMPENING, PEFT_TYPES, REQUIRES, ptq_options, ptq_spec, quantize_with
from kbit.plugins._ptq import build_quant_config, merge_policy, prepare_model, resolve_for_model  # noqa: F401  (shared hooks)

NAME = "gptq"
OPTIONS = ptq_options(
    symmetric=True,
    extra=(Option("dampening", GPTQ_DAMPENING, number(minimum=0, below=1), "Hessian dampening, as a fraction of its mean diagonal"),),
)


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="adapter on the full-precision base, merged, then GPTQ post-training quantization (llm-compressor)",
        options=OPTIONS,
        requires=REQUIRES,
        peft_types=PEFT_TYPES,
        post_training_quantization=True,
        needs_calibration=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    return ptq_spec(NAME, OPTIONS, options, device, extra_keys=("dampening",))


@hookimpl
def quantize_model(model_dir: Path, spec: QuantizationSpec, calibration: list[str], output_dir: Path) -> None:
    from llmcompressor.modifiers.quantization import GPTQModifier

    def recipe(**kwargs: Any) -> Any:
        return GPTQModifier(dampening_frac=spec.extras["dampening"], **kwargs)

    quantize_with(recipe, model_dir, spec, calibration, output_dir)
