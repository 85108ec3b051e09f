"""torchao-int8: a torchao int8 weight-only base (per-channel symmetric scales) with a LoRA or DoRA adapter.

PEFT trains adapters on torchao int8 weights (``peft.tuners.lora.torchao``), and it can merge into
them only by dequantizing, adding the update and re-quantizing to int8, which rounds most of a small
update away. So the adapter is merged into the dequantized int8 weights — exactly what it trained
against, since the int8 weights are only ever used dequantized (weight-only) — with torchao's own
``dequantize()`` (``dequantize_base``: transformers cannot dequantize torchao models). Merging into the
original base instead agreed with the trained model on only 90.4% of SmolLM2's top-1 predictions
after 10 steps: the int8 rounding the adapter learned against is not negligible for a small model.
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
    torch_dtype,
    training_options,
    training_settings,
)

NAME = "torchao-int8"
PEFT_TYPES = ("lora", "dora")

OPTIONS = adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES) + training_options()


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="torchao int8 weight-only base (per-channel), LoRA/DoRA adapter; merged into the dequantized int8 weights",
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
def dequantize_base(model: Any, spec: QuantizationSpec) -> Any:
    """The loaded int8 base with every torchao weight replaced by its ``dequantize()``d values (int8
    times the channel scale, as the weight-only forward computes them) in ``merge_dtype``, no longer
    marked quantized."""
    import torch

    dtype = torch_dtype(spec.training.merge_dtype)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and type(weight) not in (torch.Tensor, torch.nn.Parameter) \
                    and callable(getattr(weight, "dequantize", None)):
                module.weight = torch.nn.Parameter(weight.dequantize().to(dtype), requires_grad=False)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # transformers' own: the model now saves as a plain one
    return model


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    return merge_or_keep(spec, base="dequantized")
