"""The quantized linear layer of ``qalora``: GGUF Q4_1 blocks held as the file holds them. Not a plugin."""

from __future__ import annotations

import torch

from kbit.plugin import (
    QuantizedLinear,
    dequantize_q4_1,
    pack_q4_1,
    q4_1_codes,
    unpack_q4_1,
)


class Q41Linear(QuantizedLinear):
    """A ``Linear`` whose weight is stored as Q4_1 blocks (20 bytes per 32 weights), dequantized on use.

    The codes come from ``q4_1_codes`` (llama.cpp's round-to-nearest rule, equal to ``gguf.quants``
    byte for byte), so the trained base is exactly the base a Q4_1 file of the model holds.
    ``activations="q8_1"`` rounds the input as llama.cpp's CPU matmul does for Q4_1 (``QuantizedLinear``).
    """

    def __init__(self, linear: torch.nn.Linear, activations: str | None = None) -> None:
        super().__init__(linear, activations)
        self.register_buffer("blocks", pack_q4_1(*q4_1_codes(linear.weight.detach())))

    def dequantize(self) -> torch.Tensor:
        return dequantize_q4_1(*unpack_q4_1(self.blocks))
