"""qlora: a 4-bit bitsandbytes base (NF4 + double quantization) with a LoRA adapter on top.

The reference plugin: it uses kbit's public API (``kbit.plugin``) exactly as a third-party plugin
would, plus the bitsandbytes helpers it shares with ``bnb-int8``.
After training, the adapter is merged into the dequantized base — the very weights it was trained
against — rather than into a re-quantized 4-bit base, which would round most of a small update away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.plugin import (
    DeviceInfo,
    MergePolicy,
    MethodInfo,
    Option,
    OptionSchema,
    QuantizationSpec,
    adapter_options,
    adapter_settings,
    boolean,
    choice,
    hookimpl,
    merge_or_keep,
    prepare_for_adapter,
    torch_dtype,
    training_options,
    training_settings,
)
from kbit.plugins._bnb import (
    REQUIRES,
    cache_4bit_weights,
    dequantize_4bit_exactly,
    set_cpu_repacking,
)

NAME = "qlora"
BLOCK_SIZE = 64  # bitsandbytes' 4-bit quantization block size; transformers does not expose it.
PEFT_TYPES = ("lora", "dora", "vera")

OPTIONS = (
    adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES)
    + OptionSchema(
        (
            Option("quant_type", "nf4", choice("nf4", "fp4"), "4-bit data type"),
            Option("double_quant", True, boolean, "quantize the quantization constants too (saves ~0.37 bit/param)"),
            Option("quant_storage", "uint8", choice("uint8", "bfloat16", "float16", "float32"),
                   "storage dtype of packed 4-bit weights; set it to the model dtype for FSDP sharding"),
            Option("keep_lm_head_fp16", False, boolean, "store the merged model's lm_head in float16"),
            Option("float_copy", "auto", choice("auto", "off"),
                   "train against a kept float copy of the 4-bit weights instead of dequantizing them in every pass "
                   "(auto: on a CPU, where the copy fits in a quarter of the free memory; costs 4 bytes per weight)"),
        )
    )
    + training_options()
)


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="bitsandbytes 4-bit NF4 base with double quantization, LoRA/DoRA/VeRA adapter (QLoRA)",
        options=OPTIONS,
        aliases=("nf4", "bnb-4bit"),
        requires=REQUIRES,
        peft_types=PEFT_TYPES,
        quantized_training=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    values = OPTIONS.resolve(options, method=NAME)
    # FSDP flattens each wrapped module into one tensor of one dtype: the adapter must match a float storage.
    storage = values["quant_storage"] if values["quant_storage"] != "uint8" else None
    return QuantizationSpec(
        method=NAME,
        weights_bits=4,
        activations_bits=None,
        kv_cache_bits=None,
        group_size=BLOCK_SIZE,
        symmetric=False,
        backend="bitsandbytes",
        adapter=adapter_settings(values),
        training=training_settings(values, device, adapter_dtype=storage),
        extras={
            "quant_type": values["quant_type"],
            "double_quant": values["double_quant"],
            "block_size": BLOCK_SIZE,
            "quant_storage": values["quant_storage"],
            "keep_lm_head_fp16": values["keep_lm_head_fp16"],
            "float_copy": values["float_copy"],
        },
    )


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.extras["quant_type"],
        bnb_4bit_use_double_quant=spec.extras["double_quant"],
        bnb_4bit_compute_dtype=torch_dtype(spec.training.compute_dtype),
        bnb_4bit_quant_storage=spec.extras["quant_storage"],
    )


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    set_cpu_repacking(model, enabled=False)
    if spec.extras.get("float_copy", "auto") == "auto":
        cache_4bit_weights(model)  # on a CPU, where a float copy fits: no dequantizing per pass
    return prepare_for_adapter(model, spec, kbit_base=True)


@hookimpl
def dequantize_base(model: Any, spec: QuantizationSpec) -> Any:
    return dequantize_4bit_exactly(model, spec.training.merge_dtype)


@hookimpl
def prepare_inference(model: Any, spec: QuantizationSpec) -> Any:
    # Repacking rounds the 4-bit scales to bf16. DoRA divides by the base weight's norm, which turns
    # that rounding into a visible change of the trained model (measured on the tiny model: 14% of
    # the adapter's own effect, against 0.7% for LoRA), so DoRA stays on the exact path.
    if spec.adapter is None or spec.adapter.peft_type != "dora":
        set_cpu_repacking(model, enabled=True)
    return model


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    return merge_or_keep(spec, base="dequantized", lm_head_dtype="float16" if spec.extras["keep_lm_head_fp16"] else None)
