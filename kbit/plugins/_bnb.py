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

    repack = enabled and has_avx512bf16()
    if repack:
        drop_4bit_weight_cache(model)  # the repacked kernel is faster still; the copy would only take memory
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = repack


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


def cache_4bit_weights(model: Any) -> int:
    """Let every CPU ``Linear4bit`` of ``model`` multiply by a kept float copy of its dequantized weight
    where ``dequantized_copy_fits``; returns how many layers do.

    bitsandbytes' CPU path dequantizes the whole weight in every forward pass and again in every
    backward pass (``MatMul4Bit``) and then multiplies in float; the copy is the very tensor it would
    dequantize (same op, same dtype), so the products are the same bit for bit. The packed weight stays
    what saving, merging and repacking read; the copy is rebuilt if the packed weight or the dtype
    changes, and ``drop_4bit_weight_cache`` frees it.
    """
    import bitsandbytes as bnb

    from kbit.plugin import dequantized_copy_fits

    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    if not dequantized_copy_fits(layers):
        return 0
    for module in layers:
        module.__class__ = _cached_class(type(module))  # in place: PEFT's wrapper and hooks keep the layer
        module._dequantized = None
    return len(layers)


def drop_4bit_weight_cache(model: Any) -> None:
    """Free the copies ``cache_4bit_weights`` keeps (e.g. before bitsandbytes repacks for inference)."""
    bases = {cached: base for base, cached in _CACHED_CLASSES.items()}
    for module in model.modules():
        if type(module) in bases:
            module.__class__ = bases[type(module)]
            del module._dequantized


_CACHED_CLASSES: dict[type, type] = {}  # a Linear4bit class -> its subclass that multiplies by the kept copy


def _cached_class(base: type) -> type:
    if base in _CACHED_CLASSES.values():
        return base
    if base not in _CACHED_CLASSES:
        _CACHED_CLASSES[base] = type(f"Cached{base.__name__}", (base,), {"forward": _cached_forward})
    return _CACHED_CLASSES[base]


def _cached_forward(self: Any, x: Any) -> Any:
    import torch

    state = self.weight.quant_state
    if state is None or x.device.type != "cpu" or getattr(state, "packing_format_for_cpu", False):
        return super(type(self), self).forward(x)
    if not self.compute_type_is_set:
        self.set_compute_type(x)
        self.compute_type_is_set = True
    dtype = self.compute_dtype or x.dtype
    key = (self.weight.data_ptr(), dtype)
    if self._dequantized is None or self._dequantized[0] != key:
        self._dequantized = (key, _dequantize_as_gemm_4bit(self.weight.data, state, dtype))
    bias = None if self.bias is None else self.bias.to(dtype)
    return torch.nn.functional.linear(x.to(dtype), self._dequantized[1], bias).to(x.dtype)


def _dequantize_as_gemm_4bit(packed: Any, state: Any, dtype: Any) -> Any:
    """The weight bitsandbytes' default ``gemm_4bit`` dequantizes and multiplies by (same ops, same dtype)."""
    import torch

    ops = torch.ops.bitsandbytes
    with torch.no_grad():
        absmax = state.absmax
        if state.nested:
            absmax = ops.dequantize_blockwise.default(state.absmax, state.state2.absmax, state.state2.code,
                                                      state.state2.blocksize, torch.float32) + state.offset
        return ops.dequantize_4bit.default(packed.view(-1, 1), absmax, state.blocksize, state.quant_type,
                                           state.shape, dtype)
