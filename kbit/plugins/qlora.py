"""qlora: a 4-bit bitsandbytes base (NF4 + double quantization) with a LoRA adapter on top.

The reference plugin: it uses only kbit's public API, exactly as a third-party plugin would.
After training, the adapter is merged into the dequantized base — the very weights it was trained
against — rather than into a re-quantized 4-bit base, which would round most of a small update away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit import MergePolicy, MethodInfo, Option, OptionSchema, QuantizationSpec, Requirement, hookimpl
from kbit.core.adapters import adapter_extras, adapter_options
from kbit.core.device import DeviceInfo, resolve_compute_dtype, torch_dtype
from kbit.core.options import DTYPES, boolean, choice

NAME = "qlora"
BLOCK_SIZE = 64  # bitsandbytes' 4-bit quantization block size; transformers does not expose it.

OPTIONS = adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=("lora", "dora", "vera")) + OptionSchema(
    (
        Option("quant_type", "nf4", choice("nf4", "fp4"), "4-bit data type"),
        Option("double_quant", True, boolean, "quantize the quantization constants too (saves ~0.37 bit/param)"),
        Option("compute_dtype", "auto", choice(*DTYPES), "matmul dtype: auto = bf16 on a GPU that has it, fp32 on CPU"),
        Option("quant_storage", "uint8", choice("uint8", "bfloat16", "float16", "float32"),
               "storage dtype of packed 4-bit weights; set it to the model dtype for FSDP sharding"),
        Option("gradient_checkpointing", "auto", choice("auto", "true", "false"),
               "recompute activations in backward to save memory: auto = on a GPU only (it costs ~40% step time on CPU)"),
        Option("merge_after_train", True, boolean, "merge the adapter into the dequantized base after training"),
        Option("merge_dtype", "auto", choice(*DTYPES), "dtype of the merged model: auto = the compute dtype"),
        Option("keep_lm_head_fp16", False, boolean, "store the merged model's lm_head in float16"),
    )
)

REQUIRES = (
    Requirement("bitsandbytes", "pip install 'bitsandbytes>=0.47'"),
    Requirement("peft", "pip install peft"),
)


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="bitsandbytes 4-bit NF4 base with double quantization, LoRA/DoRA/VeRA adapter (QLoRA)",
        options=OPTIONS,
        aliases=("nf4", "bnb-4bit"),
        requires=REQUIRES,
        peft_types=("lora", "dora", "vera"),
        quantized_training=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    values = OPTIONS.resolve(options, method=NAME)
    compute = resolve_compute_dtype(values["compute_dtype"], device)
    return QuantizationSpec(
        method=NAME,
        weights_bits=4,
        activations_bits=None,
        kv_cache_bits=None,
        group_size=BLOCK_SIZE,
        symmetric=False,
        backend="bitsandbytes",
        extras={
            "quant_type": values["quant_type"],
            "double_quant": values["double_quant"],
            "block_size": BLOCK_SIZE,
            "compute_dtype": compute,
            "quant_storage": values["quant_storage"],
            "gradient_checkpointing": values["gradient_checkpointing"] == "true"
            or (values["gradient_checkpointing"] == "auto" and device.kind == "cuda"),
            "merge_after_train": values["merge_after_train"],
            "merge_dtype": resolve_compute_dtype(values["merge_dtype"], device),
            "keep_lm_head_fp16": values["keep_lm_head_fp16"],
            "adapter": adapter_extras(values),
        },
    )


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.extras["quant_type"],
        bnb_4bit_use_double_quant=spec.extras["double_quant"],
        bnb_4bit_compute_dtype=torch_dtype(spec.extras["compute_dtype"]),
        bnb_4bit_quant_storage=spec.extras["quant_storage"],
    )


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    from peft import prepare_model_for_kbit_training

    checkpointing = spec.extras["gradient_checkpointing"]
    _set_cpu_repacking(model, enabled=False)
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )


@hookimpl
def prepare_inference(model: Any, spec: QuantizationSpec) -> Any:
    _set_cpu_repacking(model, enabled=True)
    return model


def _set_cpu_repacking(model: Any, enabled: bool) -> None:
    """Allow or forbid bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, bitsandbytes >= 0.49 repacks a Linear4bit's weights the first time it
    runs without gradients: permanently, with bf16 scales and no double quantization, after which
    backward goes through a kernel without autograd support. Training (and the merge check, which
    must see the trained weights) therefore runs with repacking off; inference may turn it on.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = enabled and has_avx512bf16()


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    if not spec.extras["merge_after_train"]:
        return MergePolicy(action="keep_adapter", reason="merge_after_train=false")
    return MergePolicy(
        action="merge",
        base="dequantized",
        dtype=spec.extras["merge_dtype"],
        lm_head_dtype="float16" if spec.extras["keep_lm_head_fp16"] else None,
    )
