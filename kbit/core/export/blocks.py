"""GGML block formats written from codes a caller already has, bit for bit as ``gguf.quants`` writes them.

``gguf.quants.quantize`` turns float weights into blocks by round-to-nearest. A method that has
computed its own codes (a Q4_1 scale ``d``, minimum ``m`` and 4-bit ``q`` per block of 32 weights,
as a QA-LoRA-style trainer does) must write exactly those codes instead, so the writer accepts
:class:`PackedTensor` records of raw block bytes, and this module packs and unpacks Q4_1 blocks in
torch. ``gguf`` has no packer for given codes (its quantizer computes them itself), hence this code;
``tests/core/export/test_blocks.py`` proves it equal to ``gguf.quants`` byte for byte.

Q4_1 block (ggml ``block_q4_1``, 20 bytes for 32 weights): ``d`` float16, ``m`` float16, then 16
bytes whose low nibbles hold ``q[0:16]`` and high nibbles ``q[16:32]``; a weight is ``d * q + m``.
"""

from __future__ import annotations

from typing import Any

import attrs

Q4_1_BLOCK = 32
Q4_1_BYTES = 20


@attrs.frozen
class PackedTensor:
    """A weight already in a GGML block format.

    ``data`` is a uint8 array of shape ``(rows, bytes_per_row)`` holding the blocks of each row in
    order; ``shape`` is the logical ``(rows, columns)`` in Hugging Face orientation (out, in);
    ``ggml_type`` a ``gguf.GGMLQuantizationType``.
    """

    data: Any
    ggml_type: Any
    shape: tuple[int, int]

    def __attrs_post_init__(self) -> None:
        from gguf import GGML_QUANT_SIZES

        block, size = GGML_QUANT_SIZES[self.ggml_type]
        rows, columns = self.shape
        if columns % block or tuple(self.data.shape) != (rows, columns // block * size) or str(self.data.dtype) != "uint8":
            raise ValueError(f"packed {self.ggml_type.name} data of shape {tuple(self.data.shape)} ({self.data.dtype}) "
                             f"does not hold a {rows}x{columns} tensor")


def q4_1_codes(weight: Any) -> tuple[Any, Any, Any]:
    """Round-to-nearest Q4_1 codes of a 2-D float tensor, computed as ``gguf.quants.Q4_1`` does.

    Returns ``(d, m, q)``: float16 ``(rows, columns/32)`` scales and minimums and uint8 ``(rows, columns)`` codes.
    """
    import torch

    rows, columns = weight.shape
    blocks = weight.detach().to(torch.float32).reshape(rows, columns // Q4_1_BLOCK, Q4_1_BLOCK)
    low = blocks.amin(dim=-1, keepdim=True)
    d = (blocks.amax(dim=-1, keepdim=True) - low) / 15
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc((blocks - low) * inverse + 0.5).clamp(0, 15).to(torch.uint8)
    return d.squeeze(-1).to(torch.float16), low.squeeze(-1).to(torch.float16), q.reshape(rows, columns)


def pack_q4_1(d: Any, m: Any, q: Any) -> Any:
    """Q4_1 blocks from codes: ``d``/``m`` ``(rows, blocks)`` (cast to float16), ``q`` uint8 ``(rows, blocks*32)`` in 0..15.

    Returns a uint8 tensor ``(rows, blocks*20)``, the bytes ``gguf`` writes for these codes.
    """
    import torch

    rows, columns = q.shape
    if columns % Q4_1_BLOCK or d.shape != (rows, columns // Q4_1_BLOCK) or m.shape != d.shape:
        raise ValueError(f"Q4_1 codes of shape {tuple(q.shape)} need d and m of shape {(rows, columns // Q4_1_BLOCK)}")
    if q.dtype != torch.uint8 or int(q.max()) > 15:
        raise ValueError("Q4_1 codes must be uint8 in 0..15")
    nibbles = q.reshape(rows, -1, 2, Q4_1_BLOCK // 2)
    packed = nibbles[:, :, 0, :] | (nibbles[:, :, 1, :] << 4)
    scale = d.to(torch.float16).contiguous().view(torch.uint8).reshape(rows, -1, 2)
    minimum = m.to(torch.float16).contiguous().view(torch.uint8).reshape(rows, -1, 2)
    return torch.cat([scale, minimum, packed], dim=-1).reshape(rows, -1)


def unpack_q4_1(raw: Any) -> tuple[Any, Any, Any]:
    """The ``(d, m, q)`` codes of Q4_1 blocks ``raw`` (uint8 ``(rows, blocks*20)``); inverse of :func:`pack_q4_1`."""
    import torch

    raw = torch.as_tensor(raw)
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, Q4_1_BYTES)
    d = blocks[:, :, 0:2].contiguous().view(torch.float16).squeeze(-1)
    m = blocks[:, :, 2:4].contiguous().view(torch.float16).squeeze(-1)
    packed = blocks[:, :, 4:]
    q = torch.stack([packed & 0x0F, packed >> 4], dim=2).reshape(rows, -1)
    return d, m, q


def dequantize_q4_1(d: Any, m: Any, q: Any) -> Any:
    """Float32 weights ``d * q + m`` of Q4_1 codes, computed as ``gguf.quants.dequantize`` does."""
    import torch

    rows = q.shape[0]
    scale = d.to(torch.float32).unsqueeze(-1)
    minimum = m.to(torch.float32).unsqueeze(-1)
    return (scale * q.reshape(rows, -1, Q4_1_BLOCK).to(torch.float32) + minimum).reshape(rows, -1)


def q4_1_tensor(d: Any, m: Any, q: Any) -> PackedTensor:
    """A :class:`PackedTensor` of Q4_1 blocks from codes, ready for the GGUF writer."""
    from gguf import GGMLQuantizationType

    packed = pack_q4_1(d, m, q)
    return PackedTensor(packed.numpy(), GGMLQuantizationType.Q4_1, (int(q.shape[0]), int(q.shape[1])))
