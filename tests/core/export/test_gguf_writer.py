"""The GGUF writer on tiny models: what llama.cpp reads (keys, names, types) and what transformers loads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader

from kbit.core.errors import ConfigError
from kbit.core.export.blocks import q4_1_codes, q4_1_tensor
from kbit.core.export.gguf import BaseModel, write_gguf
from kbit.core.model.sources import gguf_hub_id, load_gguf
from tests.core.export.conftest import bpe_model, variant_model

TEXT = "<|im_start|>user\nWhat is 12 + 34?\t ok<|im_end|>\n<|im_start|>assistant\n46<|im_end|>"


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _compare(source_dir: Path, gguf_file: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    source_tokenizer = AutoTokenizer.from_pretrained(source_dir)
    loaded, tokenizer = load_gguf(gguf_file)
    ids = source_tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    assert tokenizer(TEXT, add_special_tokens=False, return_tensors="pt").input_ids.tolist() == ids.tolist()
    assert tokenizer.chat_template == source_tokenizer.chat_template
    assert tokenizer.eos_token == source_tokenizer.eos_token
    return (_logits(source, ids) - _logits(loaded, ids)).abs().max().item()


def _fields(path: Path) -> tuple[dict, dict]:
    reader = GGUFReader(str(path))
    keys = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.t")}
    return keys, {t.name: t.tensor_type for t in reader.tensors}


def test_f16_llama_file_has_llama_cpp_keys_names_and_loads_back(tiny, tmp_path):
    out = tmp_path / "tiny-f16.gguf"
    report = write_gguf(tiny, out, "f16", name="tiny-run", base=BaseModel(name="tiny"))
    keys, tensors = _fields(out)
    config = json.loads((tiny / "config.json").read_text())
    assert keys["general.architecture"] == "llama" and keys["general.name"] == "tiny-run"
    assert keys["general.base_model.0.name"] == "tiny" and keys["general.file_type"] == 1
    assert keys["llama.block_count"] == config["num_hidden_layers"] and keys["llama.attention.head_count_kv"] == 2
    assert keys["llama.rope.dimension_count"] == config["hidden_size"] // config["num_attention_heads"]
    assert keys["tokenizer.ggml.model"] == "llama" and keys["tokenizer.chat_template"].startswith("{% for message")
    assert keys["tokenizer.ggml.eos_token_id"] == config["eos_token_id"]
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert tensors["blk.0.attn_q.weight"] == GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"] == tensors["output_norm.weight"] == GGMLQuantizationType.F32
    assert report["fallbacks"] == [] and report["tensor_types"] == {"F16": 15, "F32": 5}
    # q/k rows are permuted for llama.cpp and transformers permutes them back: logits agree to f16 rounding.
    assert _compare(tiny, out) < 2e-3


@pytest.mark.parametrize("file_type, block_type", [("q8_0", GGMLQuantizationType.Q8_0), ("q4_0", GGMLQuantizationType.Q4_0),
                                                   ("q5_1", GGMLQuantizationType.Q5_1), ("bf16", GGMLQuantizationType.BF16)])
def test_block_types_follow_llama_cpp_rules(tiny, tmp_path, file_type, block_type):
    out = tmp_path / f"tiny-{file_type}.gguf"
    write_gguf(tiny, out, file_type, name="tiny", base=BaseModel(name="tiny"))
    _, tensors = _fields(out)
    assert tensors["blk.1.ffn_down.weight"] == block_type
    # The tied embedding is the output projection: llama-quantize keeps it at Q8_0 (Q6_K) in 4/5-bit files.
    expected = GGMLQuantizationType.Q8_0 if file_type.startswith(("q4", "q5")) else block_type
    assert tensors["token_embd.weight"] == expected
    assert _compare(tiny, out) < (0.5 if file_type.startswith(("q4", "q5")) else 0.05)


def test_row_width_off_the_block_size_falls_back_to_f16(tiny, tmp_path):
    model = variant_model(tiny, tmp_path / "odd", "llama", intermediate_size=80)
    out = tmp_path / "odd.gguf"
    report = write_gguf(model, out, "q8_0", name="odd", base=BaseModel(name="odd"))
    _, tensors = _fields(out)
    assert tensors["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16  # rows of 80: not a multiple of 32
    assert tensors["blk.0.ffn_up.weight"] == GGMLQuantizationType.Q8_0
    assert len(report["fallbacks"]) == 2 and "row width 80" in report["fallbacks"][0]
    assert _compare(model, out) < 0.05


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "mistral"])
def test_other_supported_architectures_load_back(tiny, tmp_path, model_type):
    # Qwen's GGUF readers expect a byte-level BPE vocabulary, as every Qwen checkpoint has.
    if model_type.startswith("qwen"):
        model = bpe_model(tiny, tmp_path / model_type, model_type, **({"head_dim": 16} if model_type == "qwen3" else {}))
    else:
        model = variant_model(tiny, tmp_path / model_type, model_type)
    out = tmp_path / f"{model_type}.gguf"
    write_gguf(model, out, "f16", name=f"tiny-{model_type}", base=BaseModel(name=model_type))
    keys, tensors = _fields(out)
    assert keys["general.architecture"] == {"mistral": "llama"}.get(model_type, model_type)
    if model_type == "qwen2":
        assert tensors["blk.0.attn_q.bias"] == GGMLQuantizationType.F32
    if model_type == "qwen3":
        assert tensors["blk.0.attn_q_norm.weight"] == GGMLQuantizationType.F32
    assert _compare(model, out) < 2e-3


def test_prequantized_q4_1_codes_are_written_as_given(tiny, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(tiny / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    d, m, q = q4_1_codes(weights[name])
    q = (q + 1).clamp(max=15)  # codes round-to-nearest would not give: they must survive unchanged
    packed = q4_1_tensor(d, m, q)
    out = tmp_path / "pre.gguf"
    report = write_gguf(tiny, out, "f16", name="pre", base=BaseModel(name="tiny"), prequantized={name: packed})
    assert report["prequantized"] == [name]
    tensor = next(t for t in GGUFReader(str(out)).tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.tensor_type == GGMLQuantizationType.Q4_1
    assert np.array_equal(np.asarray(tensor.data).reshape(packed.data.shape), packed.data)


def test_prequantized_q_projection_rows_get_the_llama_permutation(tiny, tmp_path):
    from safetensors.torch import load_file

    weights = load_file(tiny / "model.safetensors")
    name = "model.layers.1.self_attn.q_proj.weight"
    packed = q4_1_tensor(*q4_1_codes(weights[name]))
    out = tmp_path / "pre-q.gguf"
    write_gguf(tiny, out, "q4_1", name="pre", base=BaseModel(name="tiny"), prequantized={name: packed})
    computed = tmp_path / "computed-q.gguf"
    write_gguf(tiny, computed, "q4_1", name="pre", base=BaseModel(name="tiny"))

    def q_bytes(path):
        return np.asarray(next(t for t in GGUFReader(str(path)).tensors if t.name == "blk.1.attn_q.weight").data)

    assert np.array_equal(q_bytes(out), q_bytes(computed))


def test_unsupported_architecture_and_tokenizer_are_refused(tiny, tmp_path):
    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ConfigError, match="exports GGUF for gemma2, gemma3_text, llama, mistral, phi3, qwen2, qwen3 models, not 'gpt2'"):
        write_gguf(model, tmp_path / "x.gguf", "f16", name="x", base=BaseModel(name="x"))
    scaled = variant_model(tiny, tmp_path / "scaled", "llama", rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ConfigError, match="RoPE scaling 'linear'"):
        write_gguf(scaled, tmp_path / "y.gguf", "f16", name="y", base=BaseModel(name="y"))
    with pytest.raises(ConfigError, match="unknown --type 'q3_k'"):
        write_gguf(tiny, tmp_path / "z.gguf", "q3_k", name="z", base=BaseModel(name="z"))


def test_truncated_weights_are_refused_in_one_line_and_nothing_is_written(tiny, tmp_path):
    import shutil

    damaged = Path(shutil.copytree(tiny, tmp_path / "damaged"))
    weights = next(damaged.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(ConfigError, match="are corrupt or truncated"):
        write_gguf(damaged, tmp_path / "x.gguf", "q8_0", name="x", base=BaseModel(name="x"))
    assert not (tmp_path / "x.gguf").exists()


def test_byte_level_bpe_tokenizer_gets_the_gpt2_model_and_pre_tokenizer(tiny, tmp_path):
    model = bpe_model(tiny, tmp_path / "bpe")
    out = tmp_path / "bpe.gguf"
    report = write_gguf(model, out, "f16", name="bpe", base=BaseModel(name="bpe"))
    keys, _ = _fields(out)
    assert report["tokenizer"].startswith("gpt2") and keys["tokenizer.ggml.pre"] == "gpt-2"
    assert len(GGUFReader(str(out)).fields["tokenizer.ggml.merges"].data) > 0
    assert _compare(model, out) < 2e-3


def test_whether_a_bos_token_is_added_is_written_as_the_tokenizer_does(tiny, tmp_path):
    from transformers import AutoTokenizer

    write_gguf(tiny, tmp_path / "x.gguf", "f16", name="x", base=BaseModel(name="x"))
    keys, _ = _fields(tmp_path / "x.gguf")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    adds = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    assert keys["tokenizer.ggml.add_bos_token"] is adds  # unset, llama.cpp adds one to a SentencePiece-type vocabulary


def test_a_type_in_llama_cpps_spelling_is_taken():
    from kbit.core.export.gguf import check_file_type

    assert check_file_type("Q8_0") == "q8_0" and check_file_type(" MXFP4 ") == "mxfp4"


def test_a_type_no_weight_fits_is_refused_rather_than_written_as_f16(tiny, tmp_path):
    with pytest.raises(ConfigError, match="no weight of this model has rows a whole number of TQ2_0 blocks wide"):
        write_gguf(tiny, tmp_path / "x.gguf", "tq2_0", name="x", base=BaseModel(name="x"))  # 64 wide; TQ2_0 takes 256
    assert not (tmp_path / "x.gguf").exists()


def test_a_bpe_tokenizer_without_merges_is_refused_before_writing(tiny, tmp_path):
    model = bpe_model(tiny, tmp_path / "bpe")
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["model"]["merges"] = []  # what a character-level vocabulary saved as BPE looks like; llama.cpp cannot load it
    (model / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="its BPE tokenizer has no merges, and llama.cpp cannot load"):
        write_gguf(model, tmp_path / "x.gguf", "f16", name="x", base=BaseModel(name="x"))
    assert not (tmp_path / "x.gguf").exists()


def test_hub_id_comes_from_the_gguf_metadata():
    assert gguf_hub_id({"general.source.huggingface.repository": "org/model"}, "x") == "org/model"
    assert gguf_hub_id({"general.source.url": "https://huggingface.co/org/model/tree/main"}, "x") == "org/model"
    assert gguf_hub_id({"general.organization": "HuggingFaceTB"}, "SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert gguf_hub_id({"general.name": "no organization"}, "file") == ""


def test_a_byte_level_vocabulary_with_byte_fallback_is_written_as_gpt2(tiny, tmp_path):
    """transformers' tokenizer.json for a model it converted from a GGUF file has a ByteLevel
    pre-tokenizer and byte_fallback set; it is a GPT-2 style vocabulary, not a SentencePiece one."""
    model = bpe_model(tiny, tmp_path / "fallback")
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (model / "tokenizer.json").write_text(json.dumps(spec))
    out = tmp_path / "fallback.gguf"
    report = write_gguf(model, out, "f16", name="fallback", base=BaseModel(name="tiny"))
    keys, _ = _fields(out)
    assert keys["tokenizer.ggml.model"] == "gpt2" and report["tokenizer"].startswith("gpt2")
    assert _compare(model, out) < 2e-3


@pytest.mark.parametrize("file_type, block_type", [("tq2_0", GGMLQuantizationType.TQ2_0),
                                                   ("mxfp4", GGMLQuantizationType.MXFP4)])
def test_two_bit_and_microscaling_files_hold_the_rounded_weights_and_run_in_llama_cpp(kbit_tiny_model_factory, tmp_path,
                                                                                   file_type, block_type):
    from safetensors.torch import load_file

    from kbit.core.export.grids import round_to_grid

    model = kbit_tiny_model_factory(hidden_size=256)  # TQ2_0 blocks hold 256 weights
    out = tmp_path / f"tiny-{file_type}.gguf"
    report = write_gguf(model, out, file_type, name="tiny", base=BaseModel(name="tiny"))
    _, tensors = _fields(out)
    assert tensors["blk.0.ffn_down.weight"] == block_type and tensors["token_embd.weight"] == GGMLQuantizationType.Q8_0
    assert report["fallbacks"] == []
    reader = GGUFReader(str(out))
    stored = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    from gguf import quants

    values = quants.dequantize(stored.data, block_type).reshape(tuple(reversed(stored.shape.tolist())))
    expected = round_to_grid(load_file(model / "model.safetensors")["model.layers.0.mlp.down_proj.weight"], file_type)
    assert np.array_equal(values, expected.numpy())
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(out), logits_all=True, n_ctx=32, verbose=False)
    llm.eval([1, 5, 9, 13])
    assert np.isfinite(np.asarray(llm.scores[:4])).all()


def test_llama3_rope_scaling_is_written_as_the_factors_transformers_divides_its_frequencies_by(kbit_tiny_model_factory,
                                                                                               tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}  # wavelengths of the 16-wide heads on both sides of 64/4 … 64
    model = kbit_tiny_model_factory(rope_scaling=scaling)
    out = tmp_path / "llama3.gguf"
    write_gguf(model, out, "f16", name="tiny-llama3", base=BaseModel(name="tiny"))
    stored = next(t for t in GGUFReader(str(out)).tensors if t.name == "rope_freqs.weight")
    assert stored.tensor_type == GGMLQuantizationType.F32
    rotary = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).model.rotary_emb
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    expected = (plain / rotary.inv_freq).numpy()
    assert sorted(set(np.round(expected, 3))) != [1.0]  # the chosen lengths scale some frequencies, not all
    np.testing.assert_allclose(np.asarray(stored.data), expected, rtol=1e-5)


def test_other_rope_scaling_is_refused(kbit_tiny_model_factory, tmp_path):
    model = kbit_tiny_model_factory(rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ConfigError, match="RoPE scaling 'linear' is not carried into GGUF by kbit"):
        write_gguf(model, tmp_path / "x.gguf", "f16", name="x", base=BaseModel(name="x"))


GEMMA = {  # a window shorter than the 37 tokens below; llama.cpp's layer pattern (every 2nd / 6th layer global)
    "gemma2": {"model_type": "gemma2", "layers": 4, "sliding_window": 8,
               "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0},  # small caps, so a missing one shows
    "gemma3_text": {"model_type": "gemma3_text", "layers": 6, "sliding_window": 8},
    "gemma3_text-linear": {"model_type": "gemma3_text", "layers": 6, "sliding_window": 8,  # Gemma 3 4B and up
                           "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
}


@pytest.mark.parametrize("variant", sorted(GEMMA))
def test_gemma_runs_in_llama_cpp_as_in_transformers(tmp_path, variant):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from kbit.testing import make_tiny_model

    model_type = GEMMA[variant]["model_type"]
    folder = make_tiny_model(tmp_path / model_type, **GEMMA[variant])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():  # Gemma scales by 1 + w: random norm weights, so a missing +1 shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    out = tmp_path / f"{model_type}.gguf"
    write_gguf(folder, out, "f16", name="tiny-gemma", base=BaseModel(name=model_type))
    keys, _ = _fields(out)
    arch = keys["general.architecture"]
    assert arch == model_type.removesuffix("_text") and keys[f"{arch}.attention.sliding_window"] == 8
    if arch == "gemma2":
        assert keys["gemma2.attn_logit_softcapping"] == 2.0 and keys["gemma2.final_logit_softcapping"] == 3.0
    else:
        assert keys["gemma3.rope.freq_base"] == 1_000_000.0  # the global layers'; llama.cpp runs the sliding ones at 10000
        assert keys.get("gemma3.rope.scaling.factor") == (8.0 if variant.endswith("linear") else None)
    stored = next(t for t in GGUFReader(str(out)).tensors if t.name == "blk.0.attn_norm.weight")
    expected = load_file(folder / "model.safetensors")["model.layers.0.input_layernorm.weight"] + 1
    np.testing.assert_array_equal(np.asarray(stored.data), expected.numpy())
    assert _compare(folder, out) < 2e-3  # transformers reads it back as llama.cpp runs it
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = list(range(3, 40))
    llm = llama_cpp.Llama(model_path=str(out), logits_all=True, n_ctx=64, verbose=False)
    llm.eval(ids)
    expected_logits = _logits(model, torch.tensor([ids]))[0].numpy()
    assert np.abs(np.asarray(llm.scores[:len(ids)]) - expected_logits).max() < 2e-3


@pytest.mark.parametrize("model_type, override, message", [
    ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar 256 is not the 16 llama.cpp scales"),
    ("gemma2", {"attn_logit_softcapping": None}, "attn_logit_softcapping is off, and llama.cpp always applies it"),
    ("gemma2", {"layer_types": ["full_attention"] * 4}, "layer_types differ from the pattern llama.cpp runs gemma2 with"),
    ("gemma3_text", {"final_logit_softcapping": 30.0}, "final_logit_softcapping is set, which llama.cpp's gemma3"),
    ("gemma3_text", {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 5e4}}},
     "the sliding layers' RoPE base 50000.0 is not the 10000"),
    ("gemma3_text", {"rope_parameters": {"full_attention": {"rope_type": "dynamic", "factor": 8.0, "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "RoPE scaling 'dynamic' is not carried into GGUF"),
])
def test_a_gemma_that_llama_cpp_would_run_otherwise_is_refused(tmp_path, model_type, override, message):
    from kbit.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / model_type, **{**GEMMA[model_type], **override})
    with pytest.raises(ConfigError, match=message):
        write_gguf(folder, tmp_path / "x.gguf", "f16", name="x", base=BaseModel(name="x"))
    assert not (tmp_path / "x.gguf").exists()


def test_a_gemma3_config_of_the_older_layout_gives_the_same_rope():
    from kbit.core.export.architectures import architecture_of, gemma3_rope

    old = {"model_type": "gemma3_text", "num_hidden_layers": 34, "hidden_size": 2560, "num_attention_heads": 8,
           "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 1024, "rope_theta": 1_000_000.0,
           "rope_local_base_freq": 10_000.0, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}  # Gemma 3 4B's
    assert architecture_of(old, "x").gguf_name == "gemma3"
    full, sliding = gemma3_rope(old)
    assert (full["rope_type"], full["factor"], full["rope_theta"], sliding["rope_theta"]) == ("linear", 8.0, 1e6, 1e4)
    with pytest.raises(ConfigError, match="the sliding layers' RoPE base 50000.0"):
        architecture_of({**old, "rope_local_base_freq": 50_000.0}, "x")


PHI3 = {  # the rotated width and longrope change the logits; the fused qkv and gate_up go in as they are
    "plain": {},
    "partial-rotary": {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
    "longrope": {"max_position_embeddings": 1024, "original_max_position_embeddings": 256,
                 "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "long_factor": [1.0 + i for i in range(8)],
                                     "short_factor": [1.0 + i / 2 for i in range(8)]}},
}


@pytest.mark.parametrize("variant", sorted(PHI3))
def test_phi3_runs_in_llama_cpp_as_in_transformers(tmp_path, variant):
    from transformers import AutoModelForCausalLM

    from kbit.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "phi3", model_type="phi3", **PHI3[variant])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():  # larger projections, so a wrong rotation shows in the logits
        for name, parameter in model.named_parameters():
            if "proj" in name:
                parameter.mul_(6)
    model.save_pretrained(folder)
    out = tmp_path / "phi3.gguf"
    write_gguf(folder, out, "f16", name="tiny-Phi-3", base=BaseModel(name="tiny"))
    keys, types = _fields(out)
    assert keys["general.architecture"] == "phi3" and "blk.0.attn_qkv.weight" in types and "blk.0.ffn_up.weight" in types
    # llama.cpp would look Phi-3's own tokens up for a name holding "phi-3", and the tiny vocabulary lacks them
    assert keys["general.name"] == "tiny-Phi 3"
    assert keys["phi3.rope.dimension_count"] == (8 if variant == "partial-rotary" else 16)
    loaded, _ = load_gguf(out)  # read back by kbit with what transformers' phi3 key map drops
    llama_cpp = pytest.importorskip("llama_cpp")
    # longrope: transformers takes the short factors up to the original 256 positions and the long ones past them;
    # llama.cpp takes the short ones in a context of at most 256 (its smallest) and the long ones in a longer one
    for ids, n_ctx in (([3 + i % 90 for i in range(300)], 512), (list(range(3, 40)), 256)):
        expected = _logits(model, torch.tensor([ids]))[0]
        assert (_logits(loaded, torch.tensor([ids]))[0] - expected).abs().max() < 2e-3
        llm = llama_cpp.Llama(model_path=str(out), logits_all=True, n_ctx=n_ctx, verbose=False)
        llm.eval(ids)
        assert np.abs(np.asarray(llm.scores[:len(ids)]) - expected.numpy()).max() < 5e-3  # a wrong rule: 0.09 and up


def test_a_phi3_sliding_window_shorter_than_its_context_is_written_with_a_warning(kbit_tiny_model_factory, tmp_path,
                                                                                   caplog):
    folder = kbit_tiny_model_factory(model_type="phi3", sliding_window=2047, max_position_embeddings=4096)
    with caplog.at_level("WARNING", logger="kbit"):
        write_gguf(folder, tmp_path / "x.gguf", "f16", name="x", base=BaseModel(name="x"))
    assert "llama.cpp runs phi3 without its sliding window" in caplog.text and "up to 2047 tokens" in caplog.text
    assert _fields(tmp_path / "x.gguf")[0]["phi3.attention.sliding_window"] == 2047


def test_a_file_llama_cpp_cannot_load_is_refused_with_llama_cpps_reason(kbit_tiny_model_factory, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from kbit.core.export import gguf as writer
    from kbit.core.runtime.llama_cpp import LlamaCppModel

    monkeypatch.setattr(writer, "_keep_loadable_name", lambda _: None)  # the name llama.cpp reads as Phi-3's
    out = tmp_path / "named.gguf"
    write_gguf(kbit_tiny_model_factory(), out, "f16", name="my-phi3", base=BaseModel(name="tiny"))
    with pytest.raises(ConfigError, match=r"llama.cpp cannot load .*named.gguf \(error loading model vocabulary: "
                                          r"unordered_map::at\); check that it is a GGUF model file"):
        LlamaCppModel(out)
