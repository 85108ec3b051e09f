"""Helpers shared by the bitsandbytes methods (``qlora``, ``bnb-int8``). Not a plugin itself."""

from __future__ import annotations

import types
from typing import Any

from kbit.plugin import Requirement

REQUIRES = (
    Requirement("bitsandbytes", "pip install bitsandbytes"),
    Requirement("peft", "pip install peft"),
)


def _init_8bit_state_keeping_scales(self: Any) -> None:
    # bitsandbytes' Linear8bitLt.init_8bit_state with one change: it never replaces known row
    # scales (state.SCB) with None.
    if self.weight.SCB is not None:
        self.state.SCB = self.weight.SCB
    self.state.CB = self.weight.CB
    self.weight.CB = None
    self.weight.SCB = None


def keep_int8_scales_on_cpu(model: Any) -> int:
    """Work around DoRA on 8-bit weights on a CPU (peft 0.21 + bitsandbytes 0.50); returns layers patched.

    DoRA dequantizes the base weight on every forward. On a CPU, peft then re-assigns
    ``module.weight = module.weight.to("cpu")``, which builds a fresh ``Int8Params`` whose ``CB`` is
    set but whose row scales ``SCB`` are None (they already moved to ``module.state``). The next
    forward's ``init_8bit_state`` copies that None over ``state.SCB`` and the matmul fails with
    "'NoneType' object has no attribute ...". Only CPU-resident ``Linear8bitLt`` layers are patched,
    per instance; tests/plugins/test_bnb_int8.py says when upstream no longer needs it.
    """
    import bitsandbytes as bnb

    patched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt) and module.weight.device.type == "cpu":
            module.init_8bit_state = types.MethodType(_init_8bit_state_keeping_scales, module)
            patched += 1
    return patched


def set_cpu_repacking(model: Any, enabled: bool) -> None:
    """Allow or forbid bitsandbytes' CPU inference repacking of 4-bit weights.

    On CPUs with AVX512-BF16, bitsandbytes >= 0.49 repacks a Linear4bit's weights the first time it
    runs without gradients: permanently, with bf16 scales and no double quantization, after which
    dequantizing gives wrong weights and backward goes through a kernel without autograd support.
    Training (and the merge check, which must see the trained weights) therefore runs with
    repacking off; inference may turn it on.
    """
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = enabled and has_avx512bf16()


def dequantize_4bit_exactly(model: Any, dtype_name: str) -> Any:
    """``model`` (4-bit bitsandbytes layers) with every ``Linear4bit`` turned into a plain Linear
    holding its exact dequantized weights in ``dtype_name``.

    bitsandbytes dequantizes into the dtype a weight had when it was quantized (the load dtype, bf16
    when training computes in bf16), and transformers' ``dequantize(dtype=...)`` casts only after
    that; the trained model's float32 forward dequantizes in float32. Rounding the NF4 values to bf16
    first moved logits of SmolLM2 by up to 0.6 and flipped 2.5% of its top-1 predictions, so the
    dequantization dtype is set before transformers replaces the layers.
    """
    import bitsandbytes as bnb
    import torch

    dtype = getattr(torch, dtype_name)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.quant_state is not None:
            module.weight.quant_state.dtype = dtype
    return model.dequantize(dtype=dtype)
