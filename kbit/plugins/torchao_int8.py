"""torchao-int8: a torchao int8 weight-only base (per-channel symmetric scales) with a LoRA or DoRA adapter.

PEFT trains adapters on torchao int8 weights (``peft.tuners.lora.torchao``), and it can merge into
them only by dequantizing, adding the update and re-quantizing to int8, which rounds most of a small
update away; transformers cannot dequantize a torchao model either. So the adapter is merged into
the original full-precision base. The int8 rounding the adapter trained against is small (per-channel
scales), and kbit records how closely the merged model's logits match the trained adapter model's.
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

NAME = "torchao-int8"
PEFT_TYPES = ("lora", "dora")
MERGE_REASON = (
    "PEFT merges into torchao int8 weights only by re-quantizing them (rounding a small update away) and "
    "transformers cannot dequantize torchao models, so the adapter is merged into the original base"
)

OPTIONS = adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES) + training_options()


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="torchao int8 weight-only base (per-channel), LoRA/DoRA adapter; merged into the original base",
        options=OPTIONS,
        aliases=("torchao", "ao-int8"),
        requires=(Requirement("torchao", "pip install 'kbit[torchao]'"), Requirement("peft", "pip install peft")),
        peft_types=PEFT_TYPES,
        quantized_training=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    values = OPTIONS.resolve(options, method=NAME)
    return QuantizationSpec(
        method=NAME,
        weights_bits=8,
        group_size=None,  # one scale per output channel
        symmetric=True,
        backend="torchao",
        adapter=adapter_settings(values),
        training=training_settings(values, device),
        extras={"quant_type": "int8_weight_only"},
    )


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=Int8WeightOnlyConfig())


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    # int8 tensors hold no float parameters to upcast; the rest stays in the compute dtype.
    return prepare_for_adapter(model, spec, kbit_base=False)


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    return merge_or_keep(spec, base="original", reason=MERGE_REASON)
