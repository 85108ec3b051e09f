"""Run names in the original pipeline's form: model, dataset, SFT, adapter+rank, method, bits, head dtype.

Example: ``SmolLM2-135M-Instruct-arith_SFT_LoRa64_QLORA_w4_headbf16``.
"""

from __future__ import annotations

import re

from kbit.core.spec import QuantizationSpec

_ADAPTER_LABELS = {"lora": "LoRa", "dora": "DoRa", "vera": "VeRa"}
_DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def run_name(model_name: str, dataset_name: str, spec: QuantizationSpec, head_dtype: str) -> str:
    """The run's name tag; only filesystem-safe characters survive."""
    adapter = spec.adapter
    parts = [f"{model_name}-{dataset_name}", "SFT"]
    if adapter is not None:
        parts.append(f"{_ADAPTER_LABELS.get(adapter.peft_type, adapter.peft_type)}{adapter.r}")
    parts.append(spec.method.upper().replace("-", ""))
    if spec.weights_bits:
        parts.append(f"w{spec.weights_bits}")
    parts.append(f"head{_DTYPE_LABELS.get(head_dtype, head_dtype)}")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join(parts))
