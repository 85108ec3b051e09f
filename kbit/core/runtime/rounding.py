"""The rounding llama.cpp's CPU backend applies to activations, in torch, with a straight-through gradient.

A quantized matmul in ggml does not multiply the stored weights by the float activations: it first
converts each activation row to the weight type's ``vec_dot_type`` (``ggml-cpu.c``,
``type_traits_cpu``) and runs an integer (or f16) dot product on the two. What a weight type's
matmul sees of its input:

=====================  =========  ===========================================================
weights                format     each activation becomes
=====================  =========  ===========================================================
q4_0, q5_0, q8_0 ...   ``q8_0``   per 32 values: ``d = fp16(amax / 127)``, ``q = round(x·id)``,
                                  seen as ``d·q``
q4_1, q5_1             ``q8_1``   as q8_0; the block also stores ``s = fp16(amax/127 · Σq)``,
                                  which multiplies the weight block's offset ``m``
q2_K … q6_K            ``q8_K``   per 256 values: ``d = 1 / (-127 / max)`` in float32 (``max``: the
                                  signed value of largest magnitude), ``q = min(127, round(x/d))``
f16                    ``f16``    ``fp16(x)`` (round to nearest even)
=====================  =========  ===========================================================

``round()`` and ``id`` depend on the build (``quantize_row_q8_0``/``_q8_1`` in
``ggml-cpu/arch/*/quants.c``, read in llama.cpp as vendored by llama-cpp-python 0.3.36):

- ``rule="x86"`` (AVX/AVX2/AVX-512 builds): ``id = 127 / amax`` (one float32 division) and
  ``_mm256_round_ps(_MM_ROUND_NEAREST)``: ties to even;
- ``rule="reference"`` (ggml's scalar C, ``quantize_row_q8_0_ref``, and gguf-py): ``id = 1 / d``
  with ``d`` in float32 and ``roundf``: ties away from zero.

The two differ on about one activation in a few thousand (ties and the last bit of ``id``).
q8_K has one rule (x86 calls the reference; ``nearest_int`` rounds ties to even).

A straight-through gradient (``fake_quantize_activations``) passes the output gradient to ``x``
unchanged, so a model trained through it learns against what llama.cpp computes while its
gradient stays that of the float function.

Imports torch: import this module inside functions.
"""

from __future__ import annotations

import torch

from kbit.core.errors import ConfigError

ACTIVATION_FORMATS = ("q8_0", "q8_1", "q8_K", "f16")
RULES = ("x86", "reference")

# ggml's type_traits_cpu[...].vec_dot_type for the weight types kbit writes or reads.
VEC_DOT_FORMAT = {
    "q4_0": "q8_0", "q5_0": "q8_0", "q8_0": "q8_0", "iq4_nl": "q8_0", "mxfp4": "q8_0",
    "q4_1": "q8_1", "q5_1": "q8_1",
    "q2_k": "q8_K", "q3_k": "q8_K", "q4_k": "q8_K", "q5_k": "q8_K", "q6_k": "q8_K",
    "f16": "f16",
}

_BLOCK = {"q8_0": 32, "q8_1": 32, "q8_K": 256}


def activation_format(weight_type: str) -> str | None:
    """The format llama.cpp's CPU matmul converts activations to for ``weight_type`` weights
    (``"q4_1"`` → ``"q8_1"``); None for float32 weights, whose matmul uses the activations as they are."""
    key = weight_type.lower()
    if key in ("f32", "float32"):
        return None
    if key not in VEC_DOT_FORMAT:
        raise ConfigError(f"no known activation format for weight type {weight_type!r}; "
                          f"choose one of {', '.join(sorted(VEC_DOT_FORMAT))} or f32")
    return VEC_DOT_FORMAT[key]


def check_format(fmt: str, rule: str = "x86") -> None:
    """Raise ``ConfigError`` naming the choices when ``fmt`` or ``rule`` is not one of them."""
    if fmt not in ACTIVATION_FORMATS:
        raise ConfigError(f"unknown activation format {fmt!r}; choose one of {', '.join(ACTIVATION_FORMATS)}")
    if rule not in RULES:
        raise ConfigError(f"unknown rounding rule {rule!r}; choose one of {', '.join(RULES)}")


def round_activations(x: torch.Tensor, fmt: str, rule: str = "x86") -> torch.Tensor:
    """The values llama.cpp's dot product uses for ``x`` in format ``fmt``, as ``x``'s dtype
    (computed in float32: ggml converts float32 activations). Blocks run along the last dimension,
    which must hold whole blocks (32 values, 256 for q8_K). No gradient flows through the rounding;
    use ``fake_quantize_activations`` to train through it.
    """
    check_format(fmt, rule)
    if fmt == "f16":
        return x.detach().to(torch.float16).to(x.dtype)
    size = _BLOCK[fmt]
    if x.shape[-1] % size:
        raise ConfigError(f"{fmt} activations come in blocks of {size}; this input's last dimension is {x.shape[-1]}")
    blocks = x.detach().float().reshape(*x.shape[:-1], x.shape[-1] // size, size)
    values = _q8_k(blocks) if fmt == "q8_K" else _q8_0(blocks, rule)
    return values.reshape(x.shape).to(x.dtype)


def fake_quantize_activations(x: torch.Tensor, fmt: str, rule: str = "x86") -> torch.Tensor:
    """``round_activations(x, fmt, rule)`` in the forward pass, the identity in the backward pass
    (straight-through estimator)."""
    return x + (round_activations(x, fmt, rule) - x).detach()


def _codes(blocks: torch.Tensor, amax: torch.Tensor, rule: str) -> torch.Tensor:
    """The int8 codes of q8_0/q8_1 (as float32) for float32 ``blocks`` with per-block ``amax``."""
    zero = torch.zeros((), dtype=blocks.dtype, device=blocks.device)
    if rule == "x86":
        inverse = torch.where(amax > 0, _divide(127, amax), zero)
        # ties to even, as _mm256_round_ps(_MM_ROUND_NEAREST); + 0.0 turns -0 into the int8 code's 0
        return torch.round(blocks * inverse) + 0.0
    d = amax / 127
    inverse = torch.where(d > 0, _divide(1, d), zero)
    magnitude = (blocks * inverse).abs()
    # C's roundf (ties away from zero) as gguf-py writes it: floor(a + 0.5) would round 0.49999997 up
    whole = torch.floor(magnitude)
    return torch.sign(blocks) * (whole + torch.floor(2 * (magnitude - whole))) + 0.0


def _q8_0(blocks: torch.Tensor, rule: str) -> torch.Tensor:
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = (amax / 127).to(torch.float16).float()  # the block stores d as float16
    return _codes(blocks, amax, rule) * scale


def _q8_k(blocks: torch.Tensor) -> torch.Tensor:
    # quantize_row_q8_K_ref: the signed value of largest magnitude (the first, on a tie) sets the scale.
    index = blocks.abs().argmax(dim=-1, keepdim=True)
    signed_max = blocks.gather(-1, index)
    zero = torch.zeros((), dtype=blocks.dtype, device=blocks.device)
    iscale = torch.where(signed_max != 0, _divide(-127, signed_max), zero)
    codes = torch.round(iscale * blocks).clamp(max=127) + 0.0  # nearest_int: ties to even
    d = torch.where(signed_max != 0, _divide(1, iscale), zero)
    return codes * d


def _divide(numerator: float, tensor: torch.Tensor) -> torch.Tensor:
    """``numerator / tensor`` rounded once, as C's float division: torch's ``number / tensor`` computes
    ``tensor.reciprocal() * number``, which rounds twice and misses ggml's scale in the last bit."""
    return torch.full_like(tensor, numerator) / tensor
