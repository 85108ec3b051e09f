"""Run names in the original pipeline's form: model, dataset, SFT, adapter+rank, method, bits, head dtype.

Example: ``SmolLM2-135M-Instruct-arith_SFT_LoRa64_QLORA_w4_headbf16``.
"""

from __future__ import annotations

import re

from kbit.core.errors import ConfigError
from kbit.core.contract.spec import QuantizationSpec

_ADAPTER_LABELS = {"lora": "LoRa", "dora": "DoRa", "vera": "VeRa"}
_DTYPE_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def run_name(model_name: str, dataset_name: str, spec: QuantizationSpec, head_dtype: str) -> str:
    """The run's name tag; only filesystem-safe characters survive.

    ``ConfigError`` when the name is no usable folder name (too long for the filesystem's 255-byte
    limit with kbit's suffixes, say, from a long model or file name): the user passes ``--name``.
    """
    name = _derived_name(model_name, dataset_name, spec, head_dtype)
    from kbit.core.train.config import check_run_name

    try:
        check_run_name(name)
    except ValueError as exc:
        shown = name if len(name) <= 60 else f"{name[:57]}..."
        raise ConfigError(f"the run name derived from the model, data and method ({shown}) cannot be used: {exc}; "
                          "pass --name NAME") from None
    return name


def _derived_name(model_name: str, dataset_name: str, spec: QuantizationSpec, head_dtype: str) -> str:
    adapter = spec.adapter
    parts = [f"{model_name}-{dataset_name}", "SFT"]
    if adapter is not None:
        parts.append(f"{_ADAPTER_LABELS.get(adapter.peft_type, adapter.peft_type)}{adapter.r}")
    parts.append(spec.method.upper().replace("-", ""))
    if adapter is not None and adapter.fake_quant:
        parts.append(adapter.fake_quant)  # the grid trained through: q4_0 and mxfp4 are both 4-bit
    if spec.weights_bits:
        parts.append(f"w{spec.weights_bits}")
    parts.append(f"head{_DTYPE_LABELS.get(head_dtype, head_dtype)}")
    return re.sub(r"[^A-Za-z0-9._+-]", "-", "_".join(parts))
