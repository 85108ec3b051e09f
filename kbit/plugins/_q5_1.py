"""The quantized linear layer of ``qalora -o target=q5_1``: GGUF Q5_1 blocks held as the file holds them. Not a plugin."""

from __future__ import annotations

import torch

from kbit.plugin import QuantizedLinear, dequantize_gguf


class Q51Linear(QuantizedLinear):
    """A ``Linear`` whose weight is stored as Q5_1 blocks (24 bytes per 32 weights: float16 ``d`` and ``m``,
    5-bit codes), dequantized on use. The blocks are gguf-py's quantizer's output for the layer's
    weight, so the trained base is exactly the base a Q5_1 file of the model holds.
    ``activations="q8_1"`` rounds the input as llama.cpp's CPU matmul does for Q5_1 (``QuantizedLinear``).
    """

    def __init__(self, linear: torch.nn.Linear, activations: str | None = None) -> None:
        import gguf

        super().__init__(linear, activations)
        weight = linear.weight.detach().to(torch.float32).cpu().numpy()
        blocks = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q5_1)
        self.register_buffer("blocks", torch.from_numpy(blocks).to(linear.weight.device))

    def dequantize(self) -> torch.Tensor:
        return dequantize_gguf(self.blocks, "Q5_1")
