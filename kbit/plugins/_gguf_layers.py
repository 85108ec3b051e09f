"""The quantized linear layer of method ``gguf``: a GGUF file's own tensor rows. Not a plugin.

At module level, as docs/plugins.md asks of every ``QuantizedLinear`` subclass, so that the quantized-base
cache can rebuild it (a class defined inside a function made every load run ``quantize_base`` again).
"""

from __future__ import annotations

from typing import Any

import torch

from kbit.plugin import QuantizedLinear, activation_format, dequantize_gguf


class GGUFLinear(QuantizedLinear):
    """A ``Linear`` holding a GGUF tensor's raw rows (``blocks``, uint8) of GGML type ``ggml_type``."""

    def __init__(self, linear: Any, blocks: Any, ggml_type: str, rounded: bool = False) -> None:
        super().__init__(linear, activation_format(ggml_type.lower()) if rounded else None)
        self.ggml_type = ggml_type
        self.register_buffer("blocks", blocks.to(linear.weight.device))

    def dequantize(self) -> torch.Tensor:
        return dequantize_gguf(self.blocks, self.ggml_type)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ggml_type={self.ggml_type}"
