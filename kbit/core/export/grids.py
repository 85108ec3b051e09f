"""A weight rounded onto a GGUF type's grid, in torch, bit for bit as a file of that type holds it.

``round_to_grid(weight, "q4_0")`` equals ``gguf.quants.dequantize(gguf.quants.quantize(weight, Q4_0))``
bit for bit: the same block rule (block size, scale from the block's maximum or range, codes by
truncation or round-half-away-from-zero), the scale computed in float32 and stored as float16 (the
codes are taken against the float32 scale, as ggml's reference quantizer and gguf-py do), and the
dequantization's own float32 arithmetic. It is what quantization-aware training multiplies by: a
model trained through it and written to that type is the model in the file.

Why torch and not ``gguf.quants``: a method rounds every adapted weight in every forward pass, on
the model's device, and gguf-py's numpy code runs on the CPU only and in groups of 16 rows. Every
type here is idempotent — a rounded weight rounds to itself — so merging, saving and writing the
file again with gguf-py gives the same blocks; ``tests/core/export/test_grids.py`` proves both.

A row whose width is not a multiple of the block falls back to float16, as kbit's writer (and
``convert_hf_to_gguf.py``) writes such a tensor.
"""

from __future__ import annotations

from typing import Any

GRID_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "tq2_0", "mxfp4")
"""The GGUF types a weight can be rounded to here (the ones gguf-py writes below 16 bits)."""

BLOCK_SIZES = {"q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32, "tq2_0": 256, "mxfp4": 32}

_MXFP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)  # e2m1, doubled (gguf-py's kvalues)


def round_to_grid(weight: Any, type_name: str) -> Any:
    """``weight`` (2-D, any float dtype) rounded to ``type_name``'s grid along its rows: a float32 tensor
    of the same shape holding exactly the values a GGUF tensor of that type dequantizes to.

    ValueError for a type outside :data:`GRID_TYPES`. Rows whose width is not a multiple of the
    type's block are rounded to float16 (the writer's fallback for them).
    """
    import torch

    if type_name not in BLOCK_SIZES:
        raise ValueError(f"no grid for GGUF type '{type_name}'; choose from {', '.join(GRID_TYPES)}")
    values = weight.detach().to(torch.float32)
    rows, columns = values.shape
    block = BLOCK_SIZES[type_name]
    if columns % block:
        return values.to(torch.float16).to(torch.float32)
    blocks = values.reshape(rows, columns // block, block)
    return _ROUNDERS[type_name](blocks).reshape(rows, columns)


def _half(x: Any) -> Any:
    import torch

    return x.to(torch.float16).to(torch.float32)


def _inverse(d: Any) -> Any:
    import torch

    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _signed_max(blocks: Any) -> Any:
    """The element of largest magnitude in each block, sign kept (the first of equals, as numpy's argmax)."""
    return blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))


def _round_half_away(x: Any) -> Any:
    """gguf-py's ``np_roundf``: ``sign(n) * (floor|n| + floor(2 (|n| - floor|n|)))``, as the integer codes
    it stores: a zero is +0 (``+ 0.0`` turns the -0 of a small negative input into +0, as an int8 code does)."""
    import torch

    a = x.abs()
    floored = torch.floor(a)
    return torch.sign(x) * (floored + torch.floor(2 * (a - floored))) + 0.0


def _symmetric(levels: int) -> Any:
    """Q4_0 (levels 8) and Q5_0 (16): ``d = max / -levels``, ``q = trunc(x/d + levels + 0.5)``, ``w = d (q - levels)``."""
    def rounder(blocks: Any) -> Any:
        import torch

        d = _signed_max(blocks) / -levels
        q = torch.trunc(blocks * _inverse(d) + (levels + 0.5)).clamp(0, 2 * levels - 1)
        return _half(d) * (q - levels)

    return rounder


def _offset(top: int) -> Any:
    """Q4_1 (top 15) and Q5_1 (31): ``d = (max - min) / top``, ``q = trunc((x - min)/d + 0.5)``, ``w = d q + m``."""
    def rounder(blocks: Any) -> Any:
        import torch

        low = blocks.amin(dim=-1, keepdim=True)
        d = (blocks.amax(dim=-1, keepdim=True) - low) / top
        q = torch.trunc((blocks - low) * _inverse(d) + 0.5).clamp(0, top)
        return _half(d) * q + _half(low)

    return rounder


def _q8_0(blocks: Any) -> Any:
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127
    return _round_half_away(blocks * _inverse(d)) * _half(d)


def _tq2_0(blocks: Any) -> Any:
    d = blocks.abs().amax(dim=-1, keepdim=True)
    return _half(d) * _round_half_away(blocks * _inverse(d))


def _mxfp4(blocks: Any) -> Any:
    """A shared power-of-two scale (e8m0, ``2^(floor(log2 max) - 3)``) times the nearest e2m1 value."""
    import torch

    amax = blocks.abs().amax(dim=-1, keepdim=True)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2 + 127, torch.zeros_like(amax)).to(torch.int32)
    # ggml_e8m0_to_fp32_half: bits 0x00200000 << e for e < 2, else (e - 1) << 23
    bits = torch.where(exponent < 2, 0x00200000 << exponent.clamp(max=1), (exponent - 1) << 23)
    d = bits.view(torch.float32)
    values = torch.tensor(_MXFP4_VALUES, dtype=torch.float32, device=blocks.device)
    best = (d.unsqueeze(-1) * values - blocks.unsqueeze(-1)).abs().argmin(dim=-1)
    return d * values[best]


_ROUNDERS = {"q4_0": _symmetric(8), "q5_0": _symmetric(16), "q4_1": _offset(15), "q5_1": _offset(31),
             "q8_0": _q8_0, "tq2_0": _tq2_0, "mxfp4": _mxfp4}
