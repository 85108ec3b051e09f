"""``round_to_grid`` is the file: equal bit for bit to gguf-py's quantize → dequantize, for every grid type."""

import gguf
import numpy as np
import pytest
import torch

from kbit.core.export.grids import GRID_TYPES, round_to_grid


def _file_values(weight: torch.Tensor, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    blocks = gguf.quants.quantize(weight.numpy(), qtype)
    return blocks, gguf.quants.dequantize(blocks, qtype)


@pytest.mark.parametrize("type_name", GRID_TYPES)
@pytest.mark.parametrize("scale", [0.02, 1.0, 40.0])
def test_rounding_equals_the_gguf_quantizer_byte_for_byte(type_name: str, scale: float) -> None:
    torch.manual_seed(7)
    weight = torch.randn(48, 512) * scale
    weight[1, 3] = weight[1, 9] = -weight[1].abs().max() * 1.5  # two equal extremes in one block
    weight[2, 40:44] = 0.0
    blocks, values = _file_values(weight, type_name)
    rounded = round_to_grid(weight, type_name)
    assert np.array_equal(rounded.numpy().view(np.uint32), values.view(np.uint32)), "not the file's float32 bits"
    again, _ = _file_values(rounded, type_name)
    assert np.array_equal(again, blocks), "writing the rounded weight gives other blocks"
    assert torch.equal(round_to_grid(rounded, type_name), rounded)


def test_a_row_width_off_the_block_rounds_to_float16_as_the_writer_falls_back() -> None:
    weight = torch.randn(4, 576)  # 576 = 2.25 blocks of TQ2_0's 256
    assert torch.equal(round_to_grid(weight, "tq2_0"), weight.half().float())


def test_an_unknown_type_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="q4_0, q4_1"):
        round_to_grid(torch.zeros(2, 32), "q4_k")
