"""bnb-int8: an LLM.int8() bitsandbytes base (8-bit weights, outliers kept in 16 bits) with a LoRA,
DoRA or VeRA adapter on top.

After training the adapter is kept, not merged: no merged weights reproduce the adapter model as
bitsandbytes serves it. LLM.int8 inference rounds every layer's input to int8 (outliers above the
threshold excepted); merged into the dequantized base (int8 weights times their row scales) the
model agreed with the adapter model on only 87% of SmolLM2's top-1 predictions after 10 steps, and
re-quantizing the merged weights to int8 (PEFT's merge) rounds most of a small update away. Serve the
adapter on a ``load_in_8bit`` base (``PeftModel.from_pretrained``), as ``kbit eval`` does. (On a CPU
bitsandbytes runs training steps through the dequantized weights, which is faster there, and rounds
activations only at inference: the same int8 weights either way.) ``merge_after_train`` is therefore
false here, and asking for it is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.plugin import (
    ConfigError,
    DeviceInfo,
    MergePolicy,
    MethodInfo,
    Option,
    OptionSchema,
    QuantizationSpec,
    adapter_options,
    adapter_settings,
    hookimpl,
    number,
    prepare_for_adapter,
    training_options,
    training_settings,
)
from kbit.plugins._bnb import REQUIRES, keep_int8_scales_on_cpu

NAME = "bnb-int8"
PEFT_TYPES = ("lora", "dora", "vera")

OPTIONS = (
    adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES)
    + OptionSchema(
        (
            Option("threshold", 6.0, number(minimum=0),
                   "LLM.int8 outlier threshold: input features above it stay in 16 bits (0 = none)"),
        )
    )
    + training_options(merge=False)
)


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="bitsandbytes LLM.int8 base (8-bit weights, fp16 outliers), LoRA/DoRA/VeRA adapter; the adapter is kept",
        options=OPTIONS,
        aliases=("int8", "bnb-8bit", "llm-int8"),
        requires=REQUIRES,
        peft_types=PEFT_TYPES,
        quantized_training=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    values = OPTIONS.resolve(options, method=NAME)
    return QuantizationSpec(
        method=NAME,
        weights_bits=8,
        group_size=None,  # one absmax scale per output row
        symmetric=True,
        backend="bitsandbytes",
        adapter=adapter_settings(values),
        training=training_settings(values, device),
        extras={"threshold": values["threshold"]},
    )


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=spec.extras["threshold"])


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    model = prepare_for_adapter(model, spec, kbit_base=True)
    if spec.adapter.peft_type == "dora":
        keep_int8_scales_on_cpu(model)
    return model


@hookimpl
def prepare_inference(model: Any, spec: QuantizationSpec) -> Any:
    """The int8 base with its adapter loaded again (``kbit eval``, a run's own scores): DoRA needs the same row-scale
    workaround as in training (``keep_int8_scales_on_cpu``), else its second forward fails."""
    if spec.adapter is not None and spec.adapter.peft_type == "dora":
        keep_int8_scales_on_cpu(model)
    return model


KEEP_REASON = ("LLM.int8 inference also rounds each layer's input to int8, which no merged weights reproduce "
               "(merged into the dequantized base: 87% top-1 agreement on SmolLM2); the adapter is kept to serve "
               "on its int8 base")


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    if spec.training.merge_after_train:
        raise ConfigError(f"{NAME} cannot merge its adapter: {KEEP_REASON}; drop -o merge_after_train")
    return MergePolicy(action="keep_adapter", reason=KEEP_REASON)
