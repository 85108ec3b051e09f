"""The activation rounding of llama.cpp's CPU matmuls, simulated in torch (kbit.core.runtime.rounding).

Checked against three references: gguf-py's Q8_0 (ggml's reference rule, in numpy); a line-by-line
Python port of ggml's reference C for Q8_1 and Q8_K (gguf-py has neither); and, where
llama-cpp-python is installed on an x86 CPU with AVX, ggml's own compiled quantize_row_* functions.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kbit.core.errors import ConfigError
from kbit.core.runtime.rounding import (
    activation_format,
    fake_quantize_activations,
    round_activations,
)

TIES = np.array([127.0, *(np.arange(-15, 16) + 0.5)], dtype=np.float32)  # amax 127: id = 1, every code a tie


def activations(blocks: int, seed: int = 0) -> np.ndarray:
    """Float32 activations over a wide range of scales, with exact ties (x·id = k + 0.5), an all-zero
    block and a block whose largest magnitudes tie with opposite signs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(blocks * 256) * rng.choice([1e-4, 1.0, 40.0], blocks * 256)
    x[:32] = TIES
    x[32:64] = 0.0
    x[64:96] = rng.standard_normal(32)
    x[64], x[70] = -3.0, 3.0
    x[256:288] = np.array([127.0, *range(-15, 16), -127.0][:32])
    return x.astype(np.float32)


def bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


def test_q8_0_reference_rule_is_gguf_py_bit_for_bit():
    import gguf

    x = activations(8).reshape(16, -1)
    expected = gguf.dequantize(gguf.quantize(x, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    ours = round_activations(torch.from_numpy(x), "q8_0", rule="reference").numpy()
    assert np.array_equal(bits(ours), bits(expected))


def test_f16_is_round_to_nearest_even():
    x = activations(4)
    assert np.array_equal(bits(round_activations(torch.from_numpy(x), "f16").numpy()),
                          bits(x.astype(np.float16).astype(np.float32)))


def _c_roundf(value: np.float32) -> int:
    """C's roundf (ties away from zero), exact here: a float32 plus 0.5 is exact in a Python float."""
    return int(math.copysign(math.floor(abs(float(value)) + 0.5), value))


def port_q8_1_ref(x: np.ndarray) -> np.ndarray:
    """ggml-quants.c quantize_row_q8_1_ref then dequantize, scalar by scalar in float32."""
    values = []
    f32 = np.float32
    for block in x.reshape(-1, 32):
        amax = f32(0)
        for v in block:
            amax = max(amax, abs(v))
        d = f32(amax / f32(127))
        inverse = f32(f32(1) / d) if d else f32(0)
        codes = [_c_roundf(f32(v * inverse)) for v in block]
        d16 = f32(np.float16(d))
        values += [f32(f32(q) * d16) for q in codes]
    return np.array(values, dtype=np.float32)


def port_q8_k_ref(x: np.ndarray) -> np.ndarray:
    """ggml-quants.c quantize_row_q8_K_ref then dequantize_row_q8_K, scalar by scalar in float32."""
    f32 = np.float32
    values = []
    for block in x.reshape(-1, 256):
        amax, signed = f32(0), f32(0)
        for v in block:
            if abs(v) > amax:
                amax, signed = abs(v), v
        if not amax:
            values += [0.0] * 256
            continue
        iscale = f32(f32(-127) / signed)
        codes = [min(127, int(np.rint(f32(iscale * v)))) for v in block]  # nearest_int: ties to even
        d = f32(f32(1) / iscale)
        values += [f32(f32(q) * d) for q in codes]
    return np.array(values, dtype=np.float32)


def test_q8_1_reference_rule_is_the_ported_c():
    x = activations(2)
    expected = port_q8_1_ref(x)
    ours = round_activations(torch.from_numpy(x), "q8_1", rule="reference").numpy()
    assert np.array_equal(ours, expected)


def test_q8_k_is_the_ported_c():
    x = activations(3)
    assert np.array_equal(round_activations(torch.from_numpy(x), "q8_K").numpy(), port_q8_k_ref(x))


def test_the_rules_differ_where_the_c_rounds_ties_differently():
    x = torch.from_numpy(TIES)
    x86, reference = round_activations(x, "q8_0", "x86"), round_activations(x, "q8_0", "reference")
    assert x86[1:].tolist() == [float(round(v + 0.5)) for v in range(-15, 16)]  # Python's round: ties to even
    assert reference[1:].tolist() == [float(v + 1) if v >= 0 else float(v) for v in range(-15, 16)]


def _ggml_cpu():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: ggml's compiled quantizers are not here to compare with")
    import llama_cpp

    library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
    if not library.ggml_cpu_has_avx():
        pytest.skip("the x86 rule is ggml's AVX path; this CPU or build has none")
    return library


@pytest.mark.parametrize("fmt, rule, function", [
    ("q8_0", "x86", "quantize_row_q8_0"), ("q8_1", "x86", "quantize_row_q8_1"), ("q8_K", "x86", "quantize_row_q8_K"),
    ("q8_0", "reference", "quantize_row_q8_0_generic"), ("q8_1", "reference", "quantize_row_q8_1_generic"),
])
def test_equal_to_ggml_compiled_quantizers_bit_for_bit(fmt, rule, function):
    library = _ggml_cpu()
    x = activations(64, seed=1)
    block, size = (256, 4 + 256 + 32) if fmt == "q8_K" else (32, 36 if fmt == "q8_1" else 34)
    out = np.zeros(x.size // block * size, dtype=np.uint8)
    getattr(library, function)(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int64(x.size))
    rows = out.reshape(-1, size)
    if fmt == "q8_K":
        d, codes = rows[:, :4].copy().view(np.float32), rows[:, 4:260].copy().view(np.int8)
    else:
        d, codes = rows[:, :2].copy().view(np.float16).astype(np.float32), rows[:, size - 32:].copy().view(np.int8)
    expected = (codes.astype(np.float32) * d).ravel()
    ours = torch.from_numpy(x)
    assert np.array_equal(bits(round_activations(ours, fmt, rule).numpy()), bits(expected))


@pytest.mark.parametrize("fmt", ["q8_0", "q8_1", "q8_K", "f16"])
def test_gradient_is_straight_through_and_rounding_idempotent(fmt):
    x = torch.from_numpy(activations(2)).reshape(2, -1).requires_grad_()
    weights = torch.randn_like(x)
    out = fake_quantize_activations(x, fmt)
    (out * weights).sum().backward()
    assert torch.equal(x.grad, weights)
    assert not torch.equal(out.detach(), x.detach())
    assert torch.equal(round_activations(out.detach(), fmt), out.detach())


def test_keeps_dtype_and_shape():
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    out = round_activations(x, "q8_1")
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_activation_format_of_weight_types():
    assert activation_format("Q4_1") == "q8_1" and activation_format("q4_0") == "q8_0"
    assert activation_format("q4_k") == "q8_K" and activation_format("f16") == "f16"
    assert activation_format("f32") is None


@pytest.mark.parametrize("call, message", [
    (lambda: round_activations(torch.zeros(32), "q4_0"), "unknown activation format 'q4_0'"),
    (lambda: round_activations(torch.zeros(32), "q8_0", rule="arm"), "unknown rounding rule 'arm'"),
    (lambda: round_activations(torch.zeros(48), "q8_1"), "blocks of 32; this input's last dimension is 48"),
    (lambda: activation_format("iq9_z"), "no known activation format for weight type 'iq9_z'"),
])
def test_bad_input_is_one_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_a_quantized_linear_multiplies_its_input_as_the_runtime_rounds_it():
    from kbit.plugin import QuantizedLinear, activation_format

    class Stored(QuantizedLinear):
        def __init__(self, linear: torch.nn.Linear, activations: str | None = None) -> None:
            super().__init__(linear, activations)
            self.register_buffer("stored", linear.weight.detach().clone())

        def dequantize(self) -> torch.Tensor:
            return self.stored

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 8)
    layer, exact = Stored(linear, activation_format("q4_1")), Stored(linear)
    x = torch.randn(3, 64, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, torch.nn.functional.linear(round_activations(x, "q8_1"), linear.weight, linear.bias))
    assert not torch.equal(out, exact(x)) and torch.equal(exact(x), linear(x))
    out.sum().backward()
    assert torch.allclose(x.grad, linear.weight.sum(0).expand(3, -1))
    assert "activations=q8_1" in repr(layer)
    with pytest.raises(ConfigError, match="unknown activation format 'q4_1'"):
        Stored(linear, "q4_1")

    from kbit.plugin import exact_activations

    model = torch.nn.Sequential(layer, torch.nn.ReLU())
    with exact_activations(model):  # as a merged float model computes: the weights alone
        assert torch.equal(layer(x), linear(x))
    assert layer.activations == "q8_1" and torch.equal(layer(x), out)
    with pytest.raises(RuntimeError), exact_activations(model):
        raise RuntimeError  # restored when the block fails too
    assert layer.activations == "q8_1"


@pytest.mark.parametrize("options, expected", [({}, None), ({"runtime": "llama.cpp"}, "q8_1")])
def test_qalora_trains_on_the_input_llama_cpp_multiplies_when_asked(options, expected, tmp_path):
    from kbit.core.model.bases import load_base
    from kbit.plugin import DeviceInfo
    from kbit.plugins._q4_1 import Q41Linear
    from kbit.testing import get_method, make_tiny_model

    method = get_method("qalora")
    model = load_base(method, method.resolve_spec(options, DeviceInfo.cpu()), str(make_tiny_model(tmp_path / "tiny")))
    layers = [m for m in model.modules() if isinstance(m, Q41Linear)]
    assert layers and all(m.activations == expected for m in layers)


def test_cache_dequantized_multiplies_by_one_kept_copy_with_the_same_outputs():
    from kbit.plugin import QuantizedLinear, cache_dequantized

    class Counted(QuantizedLinear):
        calls = 0

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__(linear, "q8_0")
            self.register_buffer("stored", linear.weight.detach().clone())

        def dequantize(self) -> torch.Tensor:
            Counted.calls += 1
            return self.stored

    torch.manual_seed(0)
    model = torch.nn.Sequential(Counted(torch.nn.Linear(64, 64)), torch.nn.ReLU(), Counted(torch.nn.Linear(64, 8)))
    x = torch.randn(3, 64)
    before = model(x)
    assert Counted.calls == 2
    assert cache_dequantized(model) is model and Counted.calls == 4
    for _ in range(3):
        assert torch.equal(model(x), before)  # the rounding of the input still applies
    assert Counted.calls == 4 and torch.equal(model[0].weight, model[0].stored)
