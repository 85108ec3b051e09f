"""kbit-quanto: optimum-quanto weight-only quantization as kbit methods (``quanto-int8``, ``quanto-int4``).

Written against kbit's public plugin API only (``kbit.plugin``). One class provides both methods:
each entry point names an instance (``kbit_quanto:int8``, ``kbit_quanto:int4``) whose methods are
the hook implementations, so the two methods share every line but their weight type.

transformers loads a base through ``QuantoConfig``: every Linear (except ``lm_head``) becomes an
optimum-quanto ``QLinear`` with int8 (per-channel) or int4 (grouped, 64 per scale) weights.
``QLinear`` subclasses ``torch.nn.Linear``, so PEFT wraps it with its ordinary LoRA/DoRA layer and
trains the adapter in the compute dtype on top of the quantized weights.

Merging: PEFT's merge into a ``QLinear`` writes into a quantized weight, re-rounding the update, and
transformers has no ``dequantize`` for quanto models. So ``dequantize_base`` turns every ``QLinear``
back into a plain ``Linear`` holding its weight's own ``dequantize()`` — exactly the weights the
adapter trained against (the forward of the tiny test model is unchanged to the last bit) — and the
adapter is merged into those. Merging into the original full-precision base instead was refused by
kbit's merge check on SmolLM2 (94.7% top-1 agreement for int8 after 10 steps): the quantization error
the adapter learned against is part of the trained model.
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

__version__ = "0.2.0"

PEFT_TYPES = ("lora", "dora")
INT4_GROUP = 64  # optimum-quanto's int4 weight group size
REQUIRES = (
    Requirement("optimum.quanto", "pip install 'optimum-quanto>=0.2.7'"),
    Requirement("peft", "pip install peft"),
)


class Quanto:
    """The hooks of one quanto method; ``weights`` is "int8" or "int4"."""

    def __init__(self, weights: str) -> None:
        self.weights = weights
        self.name = f"quanto-{weights}"
        self.bits = {"int8": 8, "int4": 4}[weights]
        self.options = adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES) + training_options()

    @hookimpl
    def describe_method(self) -> MethodInfo:
        return MethodInfo(
            summary=f"optimum-quanto {self.weights} weight-only base, LoRA/DoRA adapter, merged into the dequantized "
                    "weights (example external plugin)",
            options=self.options,
            requires=REQUIRES,
            peft_types=PEFT_TYPES,
            quantized_training=True,
        )

    @hookimpl
    def resolve_spec(self, options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
        if device.kind == "cpu" and options.get("compute_dtype", "auto") == "auto":
            # quanto's weight tensors keep the dtype they were quantized in and refuse casts, so a bf16
            # base cannot be computed in float32 for kbit's merge check against the float32 merged model
            # (mixed bf16/float32 attention inputs); on a CPU this method trains in float32.
            options = {**options, "compute_dtype": "float32"}
        values = self.options.resolve(options, method=self.name)
        return QuantizationSpec(
            method=self.name,
            weights_bits=self.bits,
            group_size=INT4_GROUP if self.bits == 4 else None,
            symmetric=self.bits == 8,  # int8 is symmetric per channel; int4 is grouped with a zero point
            backend="optimum-quanto",
            adapter=adapter_settings(values),
            training=training_settings(values, device),
            extras={"weights": self.weights},
        )

    @hookimpl
    def build_quant_config(self, spec: QuantizationSpec) -> Any:
        from transformers import QuantoConfig

        return QuantoConfig(weights=spec.extras["weights"])

    @hookimpl
    def prepare_model(self, model: Any, spec: QuantizationSpec) -> Any:
        return prepare_for_adapter(model, spec, kbit_base=False)

    @hookimpl
    def dequantize_base(self, model: Any, spec: QuantizationSpec) -> Any:
        """Every quanto ``QLinear`` of ``model`` replaced by a plain ``Linear`` with its dequantized weight."""
        from kbit.plugin import dequantize_linears

        dequantize_linears(model, torch_dtype(spec.training.merge_dtype),
                           weight_of=lambda module: module.qweight.dequantize() if hasattr(module, "qweight") else None)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)  # transformers' own: the model saves as a plain one
        return model

    @hookimpl
    def merge_policy(self, spec: QuantizationSpec) -> MergePolicy:
        return merge_or_keep(spec, base="dequantized")


int8 = Quanto("int8")
int4 = Quanto("int4")
