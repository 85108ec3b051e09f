"""A GGUF file's own weights: torch dequantization equal to gguf-py's, and each linear layer found in the
file in the model's row order (Llama's q/k rows un-permuted)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from kbit.core.errors import ConfigError
from kbit.core.export.architectures import permute_rows
from kbit.core.export.gguf import BaseModel, write_gguf
from kbit.core.model.gguf_tensors import (
    TORCH_TYPES,
    dequantize_gguf,
    gguf_linear_weights,
    gguf_source,
    unpermute_rows,
)

# Types gguf-py can write: quantized from random weights. The K-quants it only reads: random bytes whose
# float16 scale fields (byte offsets in a block) are overwritten by small finite values, so that every
# other bit pattern (codes, packed 6-bit scales, high bits) is exercised but no NaN/inf scale hides a difference.
WRITABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
FP16_FIELDS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _rows(type_name: str, rows: int = 6, seed: int = 0) -> np.ndarray:
    """Raw uint8 rows (rows, bytes) of ``type_name`` holding four blocks each."""
    qtype = GGMLQuantizationType[type_name]
    block, size = GGML_QUANT_SIZES[qtype]
    generator = np.random.default_rng(seed)
    columns = 4 * max(block, 32)
    if type_name in WRITABLE:
        weights = generator.standard_normal((rows, columns)).astype(np.float32)
        return np.ascontiguousarray(gguf.quants.quantize(weights, qtype)).view(np.uint8).reshape(rows, -1)
    raw = generator.integers(0, 256, (rows, columns // block * size), dtype=np.uint8)
    blocks = raw.reshape(-1, size)
    for offset in FP16_FIELDS[type_name]:
        scales = (generator.standard_normal(len(blocks)) * 0.01).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw


def test_every_torch_type_is_covered_by_the_cases_here():
    assert set(TORCH_TYPES) == set(WRITABLE) | set(FP16_FIELDS)


@pytest.mark.parametrize("type_name", TORCH_TYPES)
def test_torch_dequantization_equals_gguf_py_bit_for_bit(type_name):
    raw = _rows(type_name)
    expected = gguf.quants.dequantize(raw, GGMLQuantizationType[type_name])
    got = dequantize_gguf(torch.from_numpy(raw), type_name)
    assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
    assert np.isfinite(expected).all()
    # 0 ulp: the same float32 operations in the same order; compared as bit patterns (−0.0 ≠ 0.0 here).
    assert np.array_equal(got.numpy().view(np.int32), expected.view(np.int32))


@pytest.mark.parametrize("type_name", ["TQ2_0", "MXFP4"])
def test_types_without_a_torch_port_are_dequantized_by_gguf_py(type_name):
    qtype = GGMLQuantizationType[type_name]
    weights = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    raw = np.ascontiguousarray(gguf.quants.quantize(weights, qtype)).view(np.uint8).reshape(4, -1)
    got = dequantize_gguf(torch.from_numpy(raw), type_name)
    assert type_name not in TORCH_TYPES and got.dtype == torch.float32 and tuple(got.shape) == (4, 256)
    assert np.array_equal(got.numpy(), gguf.quants.dequantize(raw, qtype))


def test_rows_that_are_not_whole_blocks_or_an_unknown_type_are_refused():
    with pytest.raises(ValueError, match="do not hold whole Q4_1 blocks"):
        dequantize_gguf(torch.zeros((2, 30), dtype=torch.uint8), "Q4_1")
    with pytest.raises(ConfigError, match="unknown GGML type 'Q9_9'"):
        dequantize_gguf(torch.zeros((2, 20), dtype=torch.uint8), "Q9_9")


def test_unpermute_rows_undoes_llama_cpp_permutation():
    rows = torch.arange(48 * 3).reshape(48, 3)
    assert not torch.equal(permute_rows(rows, 4), rows)
    assert torch.equal(unpermute_rows(permute_rows(rows, 4), 4), rows)


@pytest.fixture(scope="module")
def q8_file(tiny, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny random Llama (grouped-query: 4 heads, 2 kv heads) and its Q8_0 GGUF written by kbit's exporter."""
    folder = tmp_path_factory.mktemp("gguf-tensors")
    write_gguf(tiny, folder / "tiny-q8_0.gguf", "q8_0", name="tiny", base=BaseModel(name="tiny"))
    return tiny, folder / "tiny-q8_0.gguf"


def test_each_linear_layer_is_found_in_the_file_in_the_model_row_order(q8_file):
    from transformers import AutoModelForCausalLM

    model_dir, path = q8_file
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    packed = gguf_linear_weights(path, model)
    assert len(packed) == 2 * 7 and "lm_head" not in packed  # q k v o gate up down per layer; not the head
    stored = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    for name, tensor in packed.items():
        weight = model.get_submodule(name).weight.detach()
        assert tensor.ggml_type == GGMLQuantizationType.Q8_0 and tensor.shape == tuple(weight.shape)
        # Q8_0 of the Hugging Face rows, in their order: blocks run along rows, so row order and rounding commute.
        expected = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), GGMLQuantizationType.Q8_0),
                                          GGMLQuantizationType.Q8_0)
        assert np.array_equal(dequantize_gguf(torch.from_numpy(tensor.data), tensor.ggml_type).numpy(), expected), name
    q_file = np.asarray(stored["blk.0.attn_q.weight"].data)
    assert not np.array_equal(packed["model.layers.0.self_attn.q_proj"].data, q_file)  # the file's rows were moved
    assert np.array_equal(packed["model.layers.0.self_attn.v_proj"].data, np.asarray(stored["blk.0.attn_v.weight"].data))


def test_a_model_the_file_does_not_hold_is_refused(q8_file):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir, path = q8_file
    config = AutoConfig.from_pretrained(model_dir)
    config.intermediate_size = 64
    with pytest.raises(ConfigError, match=r"blk.0.ffn_gate.weight .* has shape \(128, 64\), layer .*\(64, 64\); it is "
                                          "not the file"):
        gguf_linear_weights(path, AutoModelForCausalLM.from_config(config))
    config = AutoConfig.for_model("gpt2", n_embd=64, n_layer=1, n_head=4)
    with pytest.raises(ConfigError, match="not 'gpt2'; train this model with a method that does not read GGUF blocks"):
        gguf_linear_weights(path, AutoModelForCausalLM.from_config(config))


def test_gguf_source_is_the_file_a_converted_folder_records(q8_file, tmp_path, monkeypatch):
    from transformers import AutoConfig

    from kbit.core.model.sources import resolve_model

    model_dir, path = q8_file
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))
    converted = resolve_model(str(path)).path
    assert gguf_source(AutoConfig.from_pretrained(converted)) == path.resolve()
    assert json.loads((Path(converted) / "kbit-source.json").read_text())["gguf"] == str(path.resolve())
    assert gguf_source(AutoConfig.from_pretrained(model_dir)) is None
