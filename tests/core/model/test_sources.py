"""GGUF conversion of the embedded SmolLM2 with whichever transformers is installed.

CI runs this in both of its environments (transformers 5.17 from constraints/tested.txt, and the
newest release the ranges allow), so the conversion is checked on each side of that range.
"""

from __future__ import annotations

import json

import pytest

from kbit.core.model.sources import convert_gguf, default_gguf_path

pytestmark = pytest.mark.slow


def test_gguf_converts_to_plain_float32_weights_equal_to_the_dequantized_blocks(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))  # convert afresh with this transformers
    gguf = default_gguf_path()
    target = convert_gguf(gguf, name="SmolLM2-135M-Instruct")
    assert target.parent == tmp_path / "cache" / "models"

    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config  # an ordinary dense checkpoint, loadable anywhere
    blocks = {t.name: t for t in GGUFReader(gguf).tensors}
    down = blocks["blk.3.ffn_down.weight"]
    assert down.tensor_type.name == "Q4_1"  # a packed type, not a float copy
    with safe_open(str(next(target.glob("*.safetensors"))), framework="pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F32"}
        stored = weights.get_tensor("model.layers.3.mlp.down_proj.weight")
    np.testing.assert_array_equal(stored.numpy(), dequantize(down.data, down.tensor_type))

    model = AutoModelForCausalLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.eos_token == "<|im_end|>"  # the config's id, not the GGUF tokenizer's guess
    ids = tokenizer("2 + 3 =", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(input_ids=ids).logits.isfinite().all()
    assert convert_gguf(gguf, name="SmolLM2-135M-Instruct") == target  # cached: converted once
