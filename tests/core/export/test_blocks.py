"""Q4_1 blocks packed from codes are the bytes gguf.quants writes, and unpack back exactly."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from kbit.core.export.blocks import PackedTensor, dequantize_q4_1, pack_q4_1, q4_1_codes, q4_1_tensor, unpack_q4_1


@pytest.fixture
def weight():
    torch.manual_seed(0)
    w = torch.randn(48, 128) * 0.05
    w[3, :32] = 0.7  # a constant block: d == 0
    w[5, 32:64] = torch.linspace(-1, 1, 32)
    return w


def test_codes_packed_equal_gguf_quantize_bit_for_bit(weight):
    ours = pack_q4_1(*q4_1_codes(weight)).numpy()
    theirs = quants.quantize(weight.numpy(), GGMLQuantizationType.Q4_1)
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape == (48, 128 // 32 * 20)
    assert np.array_equal(ours, theirs)


def test_unpack_then_pack_round_trips_gguf_bytes(weight):
    raw = quants.quantize(weight.numpy(), GGMLQuantizationType.Q4_1)
    d, m, q = unpack_q4_1(torch.from_numpy(raw))
    assert d.dtype == m.dtype == torch.float16 and q.dtype == torch.uint8 and int(q.max()) <= 15
    assert np.array_equal(pack_q4_1(d, m, q).numpy(), raw)


def test_dequantized_codes_equal_gguf_dequantize(weight):
    raw = quants.quantize(weight.numpy(), GGMLQuantizationType.Q4_1)
    ours = dequantize_q4_1(*unpack_q4_1(torch.from_numpy(raw))).numpy()
    assert np.array_equal(ours, quants.dequantize(raw, GGMLQuantizationType.Q4_1))


def test_given_codes_are_written_as_given_not_requantized():
    # Codes no round-to-nearest would produce from their own dequantized weights are kept as they are.
    d = torch.full((2, 1), 0.5, dtype=torch.float16)
    m = torch.full((2, 1), -1.0, dtype=torch.float16)
    q = torch.arange(32, dtype=torch.uint8).remainder(16).repeat(2, 1)
    packed = q4_1_tensor(d, m, q)
    assert packed.ggml_type == GGMLQuantizationType.Q4_1 and packed.shape == (2, 32)
    again = unpack_q4_1(torch.from_numpy(packed.data))
    assert all(torch.equal(a, b) for a, b in zip(again, (d.squeeze(-1).reshape(2, 1), m.reshape(2, 1), q)))


def test_bad_codes_and_shapes_are_refused():
    d = torch.zeros((1, 1), dtype=torch.float16)
    with pytest.raises(ValueError, match="0..15"):
        pack_q4_1(d, d, torch.full((1, 32), 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="need d and m"):
        pack_q4_1(d, d, torch.zeros((1, 64), dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not hold"):
        PackedTensor(np.zeros((2, 20), dtype=np.uint8), GGMLQuantizationType.Q4_1, (2, 64))
