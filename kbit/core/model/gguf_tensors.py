"""A GGUF file's own weights: read as stored, dequantized in torch, matched to a transformers model's layers.

- ``gguf_source(model)``: the GGUF file a loaded base was converted from (``kbit-source.json`` in the
  converted folder, which ``config._name_or_path`` names), or None.
- ``gguf_linear_weights(path, model)``: ``{linear module name: PackedTensor}``, each the file's raw block
  rows in the model's row order (Llama's q/k rows un-permuted, see below).
- ``dequantize_gguf(blocks, ggml_type)``: float32 weights of raw block rows, equal bit for bit to
  ``gguf.quants.dequantize``.

Reading and the block layouts are gguf-py's (``GGUFReader``, ``GGML_QUANT_SIZES``, ``quants``). The
torch ports of its numpy ``dequantize_blocks`` exist because a method that trains on the packed blocks
dequantizes every linear layer in every forward pass: gguf-py's numpy code runs on the CPU
only, so it cannot run where the model runs (CUDA, MPS), and on a CPU thread it is slower too (it works
through groups of 16 rows and joins them with ``np.concatenate``; the ports take a whole tensor at once
and reuse their temporaries). The ports repeat gguf-py's operations in its order — one float32 rounding per
multiply or add, no fused multiply-add — so they give the same float32 bits, not merely close ones.
Types without a port (IQ*, TQ*, MXFP4, ...) are dequantized by ``gguf.quants.dequantize`` itself.

Row order: llama.cpp stores Llama's q and k projection rows permuted (``permute_rows`` in
:mod:`kbit.core.export.architectures`) and transformers' GGUF loader permutes them back. A block runs
along a row, so whole packed rows move with the inverse permutation and the blocks stay intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError
from kbit.core.export.architectures import SUPPORTED, row_permutation_heads
from kbit.core.export.blocks import PackedTensor
from kbit.core.model.sources import SOURCE_RECORD

GGUF_MODEL_TYPES = tuple(sorted(t for t, a in SUPPORTED.items() if not a.sliding_period and a.gguf_name != "phi3"))
"""The transformers ``model_type`` values whose layers :func:`gguf_linear_weights` finds in a GGUF file.

Not Gemma and Phi-3, which kbit writes but does not train on as a file: transformers' readers of their GGUF
tokenizers build in the family's own vocabulary rules (Gemma's special tokens, Phi-3's SentencePiece spaces), and
no vocabulary without them (kbit's tiny test models) converts as llama.cpp reads it, so the path is untested
without the real checkpoints."""

TORCH_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
"""The GGML types dequantized in torch; every other type gguf-py can dequantize goes through its numpy code."""


def gguf_source(model: Any) -> Path | None:
    """The GGUF file ``model`` (a loaded model or its config) was converted from, as kbit recorded it.

    kbit converts a ``.gguf`` base into a folder holding ``kbit-source.json``; the config's
    ``_name_or_path`` is that folder. Returns None for a model not converted from a GGUF file. The
    path is returned as recorded: the file may have been moved or deleted since.
    """
    config = getattr(model, "config", model)
    folder = getattr(config, "_name_or_path", "") or ""
    try:
        record = json.loads((Path(folder) / SOURCE_RECORD).read_text(encoding="utf-8")) if folder else None
    except (OSError, ValueError):
        return None
    source = record.get("gguf") if isinstance(record, dict) else None
    return Path(source) if isinstance(source, str) and source else None


def ggml_type(name: Any) -> Any:
    """The ``gguf.GGMLQuantizationType`` for a type or its name ("Q4_1", "q4_1")."""
    from gguf import GGMLQuantizationType

    if isinstance(name, GGMLQuantizationType):
        return name
    try:
        return GGMLQuantizationType[str(name).upper()]
    except KeyError:
        raise ConfigError(f"unknown GGML type '{name}'; gguf knows {', '.join(t.name for t in GGMLQuantizationType)}") from None


def dequantize_gguf(blocks: Any, type_name: Any) -> Any:
    """Float32 weights of raw GGML rows ``blocks`` (uint8 ``(rows, bytes_per_row)``, torch or numpy).

    Returns a torch float32 ``(rows, columns)`` tensor on ``blocks``' device, equal bit for bit to
    ``gguf.quants.dequantize`` of the same bytes. ConfigError for a type gguf-py cannot dequantize.
    """
    import gguf
    import numpy as np
    import torch

    qtype = ggml_type(type_name)
    raw = torch.as_tensor(blocks)
    if raw.dtype != torch.uint8 or raw.dim() != 2:
        raise ValueError(f"GGML rows must be a 2-D uint8 tensor, not {raw.dim()}-D {raw.dtype}")
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, width = raw.shape
    if width % type_size:
        raise ValueError(f"{width} bytes per row do not hold whole {qtype.name} blocks of {type_size} bytes")
    port = _PORTS.get(qtype.name)
    if port is None:
        try:
            values = gguf.quants.dequantize(np.ascontiguousarray(raw.cpu().numpy()), qtype)
        except NotImplementedError:
            raise ConfigError(f"gguf-py cannot dequantize {qtype.name} tensors; upgrade it: pip install -U gguf") from None
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(rows, -1).to(raw.device)
    values = port(raw.contiguous().reshape(-1, type_size))
    return values.reshape(rows, width // type_size * block_size)


def unpermute_rows(rows: Any, heads: int) -> Any:
    """The inverse of llama.cpp's ``LlamaModel.permute`` on the first axis (transformers' ``reverse_permute_weights``)."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_linear_weights(path: Path | str, model: Any) -> dict[str, PackedTensor]:
    """The packed weight of each of ``model``'s linear layers (not the output head) as the GGUF file stores it.

    ``model`` is the base as loaded from the file's conversion, before any layer is replaced or adapter attached.

    Keys are module names (``model.layers.0.self_attn.q_proj``); each :class:`PackedTensor` holds the
    file's raw rows (any type, as stored) in the model's row order and its logical ``(out, in)`` shape.
    ConfigError when the model's architecture has no known GGUF layout, or the file lacks a layer or
    holds it in another shape: then ``model`` was not loaded from this file.
    """
    import gguf
    import numpy as np
    import torch

    config = model.config.to_dict()
    architecture = SUPPORTED.get(str(config.get("model_type", "")))
    if architecture is None:
        raise ConfigError(f"kbit reads GGUF weights of {', '.join(GGUF_MODEL_TYPES)} models, not "
                          f"'{config.get('model_type', 'unknown')}'; train this model with a method that does not read GGUF blocks")
    reader = gguf.GGUFReader(str(path))
    stored = {tensor.name: tensor for tensor in reader.tensors}
    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == architecture.gguf_name)
    # gguf's own name table (what kbit's exporter uses too); only linear weights are looked up here.
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    packed: dict[str, PackedTensor] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head:
            continue
        hf_name = f"{module_name}.weight"
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight",))
        tensor = stored.get(gguf_name) if gguf_name else None
        if tensor is None:
            raise ConfigError(f"GGUF file {path} holds no tensor for layer {module_name}"
                              f"{f' ({gguf_name})' if gguf_name else ''}; it is not the file this model was read from")
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
        if shape != (module.out_features, module.in_features):
            raise ConfigError(f"GGUF tensor {gguf_name} in {path} has shape {shape}, layer {module_name} "
                              f"{(module.out_features, module.in_features)}; it is not the file this model was read from")
        raw = np.ascontiguousarray(tensor.data).view(np.uint8).reshape(shape[0], -1)
        heads = row_permutation_heads(hf_name, config, architecture)
        raw = np.array(unpermute_rows(raw, heads) if heads else raw, copy=True)  # not a view of the file's memory map
        packed[module_name] = PackedTensor(raw, tensor.tensor_type, shape)
    return packed


# Ports of gguf.quants' numpy dequantize_blocks: each takes uint8 blocks (n_blocks, type_size) and returns
# float32 (n_blocks, block_size), with gguf-py's operations in its order (in place where the operand is a
# temporary: the same roundings, fewer full-size allocations).

QK_K = 256


def _f16(raw: Any) -> Any:
    import torch

    return raw.contiguous().view(torch.float16).to(torch.float32)


def _shifts(raw: Any, *amounts: int) -> Any:
    import torch

    return torch.tensor(amounts, dtype=torch.uint8, device=raw.device)


def _nibbles(qs: Any, width: int) -> Any:
    """Low then high nibbles of ``qs`` split into groups of ``width`` bytes: (n, groups, 2, width)."""
    n = qs.shape[0]
    return (qs.reshape(n, -1, 1, width) >> _shifts(qs, 0, 4).reshape(1, 1, 2, 1)) & 0x0F


def _bits(qh: Any) -> Any:
    """Bit ``i`` of the little-endian word ``qh`` (n, bytes) as (n, 8·bytes) uint8 0/1: gguf's ``qh.view(uint32) >> arange(32)``."""
    n = qh.shape[0]
    return ((qh.reshape(n, -1, 1) >> _shifts(qh, *range(8)).reshape(1, 1, 8)) & 1).reshape(n, -1)


def _f32(blocks: Any) -> Any:
    import torch

    return blocks.contiguous().view(torch.float32)


def _bf16(blocks: Any) -> Any:
    import torch

    # gguf-py: the int16 widened and shifted into the high half of a float32
    return (blocks.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)


def _q4_0(blocks: Any) -> Any:
    import torch

    d, qs = _f16(blocks[:, :2]), blocks[:, 2:]
    q = (_nibbles(qs, 16).reshape(blocks.shape[0], -1).to(torch.int8) - 8).to(torch.float32)
    return q.mul_(d)


def _q4_1(blocks: Any) -> Any:
    import torch

    d, m, qs = _f16(blocks[:, :2]), _f16(blocks[:, 2:4]), blocks[:, 4:]
    q = _nibbles(qs, 16).reshape(blocks.shape[0], -1).to(torch.float32)
    return q.mul_(d).add_(m)


def _q5_0(blocks: Any) -> Any:
    import torch

    d, qh, qs = _f16(blocks[:, :2]), _bits(blocks[:, 2:6]), blocks[:, 6:]
    ql = _nibbles(qs, 16).reshape(blocks.shape[0], -1)
    q = ((ql | (qh << 4)).to(torch.int8) - 16).to(torch.float32)
    return q.mul_(d)


def _q5_1(blocks: Any) -> Any:
    import torch

    d, m, qh, qs = _f16(blocks[:, :2]), _f16(blocks[:, 2:4]), _bits(blocks[:, 4:8]), blocks[:, 8:]
    ql = _nibbles(qs, 16).reshape(blocks.shape[0], -1)
    q = (ql | (qh << 4)).to(torch.float32)
    return q.mul_(d).add_(m)


def _q8_0(blocks: Any) -> Any:
    import torch

    d, x = _f16(blocks[:, :2]), blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return x.mul_(d)


def _q2_k(blocks: Any) -> Any:
    import torch

    n = blocks.shape[0]
    scales, qs = blocks[:, :QK_K // 16], blocks[:, QK_K // 16:QK_K // 16 + QK_K // 4]
    d, dmin = _f16(blocks[:, -4:-2]), _f16(blocks[:, -2:])
    dl = (d * (scales & 0xF).to(torch.float32)).reshape(n, QK_K // 16, 1)
    ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, QK_K // 16, 1)
    q = (qs.reshape(n, -1, 1, 32) >> _shifts(blocks, 0, 2, 4, 6).reshape(1, 1, 4, 1)) & 3
    q = q.reshape(n, QK_K // 16, 16).to(torch.float32)
    return q.mul_(dl).sub_(ml).reshape(n, -1)


def _q3_k(blocks: Any) -> Any:
    import torch

    n = blocks.shape[0]
    hmask, qs = blocks[:, :QK_K // 8], blocks[:, QK_K // 8:QK_K // 8 + QK_K // 4]
    scales, d = blocks[:, QK_K // 8 + QK_K // 4:-2], _f16(blocks[:, -2:])
    low = (scales[:, :8].reshape(n, 1, 8) >> _shifts(blocks, 0, 4).reshape(1, 2, 1)).reshape(n, 16)
    high = (scales[:, 8:].reshape(n, 1, 4) >> _shifts(blocks, 0, 2, 4, 6).reshape(1, 4, 1)).reshape(n, 16)
    scale = (((low & 0x0F) | ((high & 0x03) << 4)).to(torch.int8) - 32).to(torch.float32)
    dl = (d * scale).reshape(n, 16, 1)
    ql = (qs.reshape(n, -1, 1, 32) >> _shifts(blocks, 0, 2, 4, 6).reshape(1, 1, 4, 1)).reshape(n, 16, QK_K // 16) & 3
    qh = (hmask.reshape(n, -1, 1, 32) >> _shifts(blocks, *range(8)).reshape(1, 1, 8, 1)).reshape(n, 16, QK_K // 16) & 1
    qh = qh ^ 1  # a set bit means no offset (as in gguf-py)
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return q.mul_(dl).reshape(n, QK_K)


def _k_scale_min(scales: Any) -> tuple[Any, Any]:
    """gguf's ``Q4_K.get_scale_min``: the 6-bit scales and minimums packed in 12 bytes, each (n, 8)."""
    import torch

    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_scaled(blocks: Any, q: Any) -> Any:
    """``d·sc·q − dmin·m`` per 32-weight sub-block of Q4_K/Q5_K blocks (q: (n, 8, 32) float32)."""
    import torch

    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scale_min(blocks[:, 4:16])
    d = (d * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (dmin * mn.to(torch.float32)).reshape(n, -1, 1)
    return q.mul_(d).sub_(dm).reshape(n, QK_K)


def _q4_k(blocks: Any) -> Any:
    import torch

    q = _nibbles(blocks[:, 16:], 32).reshape(blocks.shape[0], -1, 32).to(torch.float32)
    return _k_scaled(blocks, q)


def _q5_k(blocks: Any) -> Any:
    import torch

    n = blocks.shape[0]
    qh, qs = blocks[:, 16:16 + QK_K // 8], blocks[:, 16 + QK_K // 8:]
    ql = _nibbles(qs, 32).reshape(n, -1, 32)
    high = ((qh.reshape(n, -1, 1, 32) >> _shifts(blocks, *range(8)).reshape(1, 1, 8, 1)) & 1).reshape(n, -1, 32)
    return _k_scaled(blocks, (ql | (high << 4)).to(torch.float32))


def _q6_k(blocks: Any) -> Any:
    import torch

    n = blocks.shape[0]
    ql, qh = blocks[:, :QK_K // 2], blocks[:, QK_K // 2:QK_K // 2 + QK_K // 4]
    scales, d = blocks[:, QK_K // 2 + QK_K // 4:-2], _f16(blocks[:, -2:])
    d = (d * scales.contiguous().view(torch.int8).to(torch.float32)).reshape(n, QK_K // 16, 1)
    low = _nibbles(ql, 64).reshape(n, -1, 32)
    high = ((qh.reshape(n, -1, 1, 32) >> _shifts(blocks, 0, 2, 4, 6).reshape(1, 1, 4, 1)) & 3).reshape(n, -1, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, QK_K // 16, -1).to(torch.float32)
    return q.mul_(d).reshape(n, QK_K)


_PORTS = {"F32": _f32, "F16": _f16, "BF16": _bf16, "Q4_0": _q4_0, "Q4_1": _q4_1,
          "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k,
          "Q6_K": _q6_k}
assert tuple(_PORTS) == TORCH_TYPES
