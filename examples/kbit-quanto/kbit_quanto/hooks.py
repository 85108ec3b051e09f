"""The hook bodies both quanto methods share; ``int8``/``int4`` are plain modules of hooks calling them.

transformers loads a base through ``QuantoConfig``: every Linear (except ``lm_head``) becomes an
optimum-quanto ``QLinear`` with int8 (per-channel) or int4 (grouped, 64 per scale) weights.
``QLinear`` subclasses ``torch.nn.Linear``, so PEFT wraps it with its ordinary LoRA/DoRA layer and
trains the adapter in the compute dtype on top of the quantized weights.

Merging: transformers has no ``dequantize`` for quanto models (NotImplementedError), and PEFT's merge
into a ``QLinear`` writes into a quantized weight, re-rounding the update. So the adapter is merged
into the *original* full-precision base: exact for the adapter, while the base differs from the one
trained against by the quantization error (small for int8; larger for int4, so int4 keeps only the
adapter by default — set ``-o merge_after_train=true`` to merge anyway). kbit records the merged
model's logit agreement with the trained adapter model, which measures that difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit import MergePolicy, MethodInfo, Option, OptionSchema, QuantizationSpec, Requirement
from kbit.core.adapters import adapter_extras, adapter_options
from kbit.core.device import DeviceInfo, resolve_compute_dtype


DTYPES = ("auto", "float32", "bfloat16", "float16")


def _dtype(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in DTYPES:
        raise ValueError(f"expected one of {', '.join(DTYPES)}")
    return text


def _boolean(raw: Any) -> bool:
    text = str(raw).strip().lower()
    if isinstance(raw, bool):
        return raw
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")

PEFT_TYPES = ("lora", "dora")
INT4_GROUP = 64  # optimum-quanto's int4 weight group size
REQUIRES = (
    Requirement("optimum.quanto", "pip install 'optimum-quanto>=0.2.7'"),
    Requirement("peft", "pip install peft"),
)


def options(*, merge: bool) -> OptionSchema:
    return adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES) + OptionSchema(
        (
            Option("compute_dtype", "auto", _dtype, "matmul dtype: auto = bf16 on a GPU that has it, fp32 on CPU"),
            Option("gradient_checkpointing", False, _boolean, "recompute activations in backward (saves memory, costs time)"),
            Option("merge_after_train", merge, _boolean,
                   "merge the adapter into the original full-precision base after training"),
            Option("merge_dtype", "auto", _dtype, "dtype of the merged model: auto = the compute dtype"),
        )
    )


def describe(weights: str, schema: OptionSchema) -> MethodInfo:
    return MethodInfo(
        summary=f"optimum-quanto {weights} weight-only base, LoRA/DoRA adapter (example external plugin)",
        options=schema,
        requires=REQUIRES,
        peft_types=PEFT_TYPES,
        quantized_training=True,
    )


def resolve(name: str, weights: str, schema: OptionSchema, raw: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    values = schema.resolve(raw, method=name)
    bits = {"int8": 8, "int4": 4}[weights]
    return QuantizationSpec(
        method=name,
        weights_bits=bits,
        group_size=INT4_GROUP if bits == 4 else None,
        symmetric=bits == 8,  # quanto int8 is symmetric per channel; int4 is grouped with a zero point
        backend="optimum-quanto",
        extras={
            "weights": weights,
            "compute_dtype": resolve_compute_dtype(values["compute_dtype"], device),
            "gradient_checkpointing": values["gradient_checkpointing"],
            "merge_after_train": values["merge_after_train"],
            "merge_dtype": resolve_compute_dtype(values["merge_dtype"], device),
            "adapter": adapter_extras(values),
        },
    )


def quant_config(spec: QuantizationSpec) -> Any:
    from transformers import QuantoConfig

    return QuantoConfig(weights=spec.extras["weights"])


def prepare(model: Any, spec: QuantizationSpec) -> Any:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if spec.extras["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model


def policy(spec: QuantizationSpec) -> MergePolicy:
    if not spec.extras["merge_after_train"]:
        return MergePolicy(
            action="keep_adapter",
            reason=f"quanto {spec.extras['weights']}: transformers cannot dequantize quanto weights and merging into "
            "the original base would differ from the trained one by the quantization error (-o merge_after_train=true "
            "merges into the original base anyway)",
        )
    return MergePolicy(
        action="merge", base="original", dtype=spec.extras["merge_dtype"],
        reason="transformers cannot dequantize quanto weights; merged into the original full-precision base",
    )
