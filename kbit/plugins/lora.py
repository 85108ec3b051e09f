"""lora: the no-quantization baseline — a LoRA, DoRA or VeRA adapter on the base in its compute dtype
(float32 on a CPU, bfloat16 on a GPU that has it).

It is the yardstick for the quantized methods: same adapter, same data, nothing rounded.
After training the adapter is merged into the original base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.plugin import (
    DeviceInfo,
    MergePolicy,
    MethodInfo,
    QuantizationSpec,
    Requirement,
    adapter_options,
    adapter_settings,
    hookimpl,
    merge_or_keep,
    prepare_for_adapter,
    training_options,
    training_settings,
)

NAME = "lora"
PEFT_TYPES = ("lora", "dora", "vera")

OPTIONS = adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES) + training_options()


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="no quantization: LoRA/DoRA/VeRA adapter on the base in its compute dtype (baseline)",
        options=OPTIONS,
        aliases=("fp", "baseline"),
        requires=(Requirement("peft", "pip install peft"),),
        peft_types=PEFT_TYPES,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    values = OPTIONS.resolve(options, method=NAME)
    training = training_settings(values, device)
    bits = {"float32": 32, "bfloat16": 16, "float16": 16}[training.compute_dtype]
    return QuantizationSpec(method=NAME, weights_bits=bits, backend="none", adapter=adapter_settings(values),
                            training=training)


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> None:
    return None


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    return prepare_for_adapter(model, spec, kbit_base=False)


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    return merge_or_keep(spec, base="original")
