"""kbit-quanto: optimum-quanto weight-only quantization as kbit methods (``quanto-int8``, ``quanto-int4``).

Written against kbit's public plugin API only (``kbit.plugin``). One class provides both methods:
each entry point names an instance (``kbit_quanto:int8``, ``kbit_quanto:int4``) whose methods are
the hook implementations, so the two methods share every line but their weight type.

transformers loads a base through ``QuantoConfig``: every Linear (except ``lm_head``) becomes an
optimum-quanto ``QLinear`` with int8 (per-channel) or int4 (grouped, 64 per scale) weights.
``QLinear`` subclasses ``torch.nn.Linear``, so PEFT wraps it with its ordinary LoRA/DoRA layer and
trains the adapter in the compute dtype on top of the quantized weights.

Merging: transformers has no ``dequantize`` for quanto models, and PEFT's merge into a ``QLinear``
writes into a quantized weight, re-rounding the update. So the adapter is merged into the *original*
full-precision base: exact for the adapter, while the base differs from the one trained against by
the quantization error (small for int8; larger for int4, so int4 keeps only the adapter by default —
set ``-o merge_after_train=true`` to merge anyway). kbit checks the merged model against the trained
adapter model and fails the run when they disagree.
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
        # int4 rounds more: only the adapter is kept unless the user asks for the merge.
        self.options = adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES) + training_options(
            merge=weights == "int8")

    @hookimpl
    def describe_method(self) -> MethodInfo:
        return MethodInfo(
            summary=f"optimum-quanto {self.weights} weight-only base, LoRA/DoRA adapter (example external plugin)",
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
    def merge_policy(self, spec: QuantizationSpec) -> MergePolicy:
        policy = merge_or_keep(spec, base="original",
                               reason="transformers cannot dequantize quanto weights; merged into the original "
                                      "full-precision base")
        if policy.action != "merge":
            return MergePolicy(
                action="keep_adapter",
                reason=f"quanto {self.weights}: transformers cannot dequantize quanto weights and merging into the "
                       "original base would differ from the trained one by the quantization error "
                       "(-o merge_after_train=true merges into the original base anyway)",
            )
        return policy


int8 = Quanto("int8")
int4 = Quanto("int4")
