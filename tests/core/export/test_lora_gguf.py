"""write_lora_gguf: a PEFT LoRA as a llama.cpp LoRA GGUF, applied by llama.cpp to the unchanged base file;
apply_lora_gguf: such a file read back onto the base GGUF's transformers model, as llama.cpp applies it."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from peft.tuners.lora import LoraLayer

from kbit.core.errors import ConfigError
from kbit.core.export.architectures import permute_rows
from kbit.core.export.gguf import BaseModel, write_gguf
from kbit.core.export.lora_gguf import apply_lora_gguf, write_lora_gguf
from kbit.core.model.sources import load_gguf
from tests.core.export.conftest import bpe_model

TOKENS = list(range(3, 40))
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# llama.cpp multiplies F16 weights with activations rounded to F16 (ggml's vec_dot type for F16), so the
# base file alone differs from float32 torch by ~2e-4 here (measured); the bound is ten times that.
BOUND = 2e-3


def _f16_base(model_dir: Path, target: Path) -> tuple[Path, Path]:
    """The model with F16-exact weights (so torch and the F16 GGUF hold the same numbers) and its F16 GGUF."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(torch.float16).to(torch.float32).save_pretrained(target / "model")
    for file in model_dir.iterdir():
        if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(file, target / "model" / file.name)
    write_gguf(target / "model", target / "base.gguf", "f16", name="tiny", base=BaseModel(name="tiny"))
    return target / "model", target / "base.gguf"


def _adapter(model_dir: Path, target: Path, std: float = 0.05, **lora):
    """A PEFT model on ``model_dir`` whose LoRA matrices are all random (std ``std``), saved to ``target``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora}))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn_like(parameter) * std)
    peft_model.save_pretrained(target)
    return peft_model.eval()


def _torch_logits(model, tokens: list[int] = TOKENS) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].numpy()


def _llama_cpp_logits(base: Path, lora: Path | None = None, tokens: list[int] = TOKENS) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(base), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=64,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()


@pytest.fixture(scope="module")
def tied(tmp_path_factory, tiny) -> tuple[Path, Path]:
    return _f16_base(tiny, tmp_path_factory.mktemp("lora-tied"))


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> tuple[Path, Path]:
    from kbit.testing import make_tiny_model

    root = tmp_path_factory.mktemp("lora-untied")
    return _f16_base(make_tiny_model(root / "tiny", tied=False), root)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, tiny) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora-qwen2")
    return _f16_base(bpe_model(tiny, root / "tiny", "qwen2"), root)


@pytest.mark.parametrize("case, lora", [
    ("tied", {}),
    ("tied", {"use_rslora": True}),  # written alpha·sqrt(r): the converter's raw alpha would halve the update here
    ("tied", {"r": 8, "rank_pattern": {"q_proj": 2, "down_proj": 16}}),
    ("untied", {"target_modules": [*LINEAR, "embed_tokens", "lm_head"]}),
    ("qwen2", {}),  # no q/k row permutation; q/k/v biases stay the base's
])
def test_llama_cpp_applies_the_adapter_as_peft_does(request, tmp_path, case, lora):
    pytest.importorskip("llama_cpp")
    model_dir, base = request.getfixturevalue(case)
    peft_model = _adapter(model_dir, tmp_path / "adapter", **lora)
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")

    expected = _torch_logits(peft_model)
    with peft_model.disable_adapter():
        assert np.abs(_llama_cpp_logits(base) - _torch_logits(peft_model)).max() < BOUND  # the base file itself agrees
    error = np.abs(_llama_cpp_logits(base, tmp_path / "lora.gguf") - expected).max()
    without = np.abs(_llama_cpp_logits(base) - expected).max()
    assert error < BOUND, error
    assert without > 100 * BOUND, without  # the adapter moves the logits far more than the bound


def test_the_file_has_llama_cpp_adapter_keys_names_and_orientation(tied, tmp_path):
    model_dir, base = tied
    peft_model = _adapter(model_dir, tmp_path / "adapter", r=4, lora_alpha=8)
    report = write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")

    reader = GGUFReader(str(tmp_path / "lora.gguf"))
    keys = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert keys["general.architecture"] == "llama" and keys["general.type"] == "adapter"
    assert keys["adapter.type"] == "lora" and keys["adapter.lora.alpha"] == 8.0
    assert keys["general.name"] == "tiny-lora" and keys["general.base_model.0.name"] == "tiny"
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "named.gguf", name="tiny-lora",
                    base_model=BaseModel(name="Tiny", hub_id="kbit/tiny", license="mit"))
    named = {key: field.contents() for key, field in GGUFReader(str(tmp_path / "named.gguf")).fields.items()}
    assert named["general.base_model.0.repo_url"] == "https://huggingface.co/kbit/tiny" and named["general.license"] == "mit"
    assert not any(key.startswith(("tokenizer.", "llama.")) for key in keys)  # no vocabulary, no hyperparameters
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    suffixes = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    assert set(tensors) == {f"blk.{i}.{s}.weight.lora_{ab}" for i in range(2) for s in suffixes for ab in "ab"}
    assert report == {"alpha": 8.0, "scales": {4: 2.0}, "modules": 14, "tensor_types": {"F32": 28}, "fallbacks": []}

    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = q.lora_A["default"].weight.detach().numpy(), q.lora_B["default"].weight.detach().numpy()
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [64, 4]  # ggml order: (in, r)
    assert list(tensors["blk.0.attn_q.weight.lora_b"].shape) == [4, 64]  # (r, out)
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_a"].data, a)
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight.lora_b"].data, permute_rows(b, 4))  # as the base's q rows
    assert not np.array_equal(permute_rows(b, 4), b)
    v = peft_model.base_model.model.model.layers[0].self_attn.v_proj
    np.testing.assert_array_equal(tensors["blk.0.attn_v.weight.lora_b"].data, v.lora_B["default"].weight.detach().numpy())


@pytest.mark.parametrize("file_type, a_type, b_type", [
    ("f16", GGMLQuantizationType.F16, GGMLQuantizationType.F16),
    ("bf16", GGMLQuantizationType.BF16, GGMLQuantizationType.BF16),
    ("q8_0", GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16),  # lora_b's rows are r = 4 wide: F16, as the converter does
])
def test_tensor_types_follow_the_converter(tied, tmp_path, file_type, a_type, b_type):
    model_dir, base = tied
    _adapter(model_dir, tmp_path / "adapter")
    report = write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora", file_type=file_type)
    types = {t.name: t.tensor_type for t in GGUFReader(str(tmp_path / "lora.gguf")).tensors}
    assert {types[n] for n in types if n.endswith(".lora_a")} == {a_type}
    assert {types[n] for n in types if n.endswith(".lora_b")} == {b_type}
    assert len(report["fallbacks"]) == (14 if file_type == "q8_0" else 0)


def _vera(model_dir: Path, target: Path) -> None:
    from peft import VeraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    get_peft_model(model, VeraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(target)


@pytest.mark.parametrize("lora, message", [
    ({"use_dora": True}, "use_dora is set: DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save is set"),
    ({"bias": "lora_only"}, "bias='lora_only'"),
    ({"lora_bias": True}, "lora_bias is set"),
    ({"alpha_pattern": {"q_proj": 32}}, "alpha_pattern gives q_proj its own alpha"),
    ({"use_rslora": True, "rank_pattern": {"q_proj": 8}}, r"rsLoRA with ranks \[4, 8\]"),
    ({"lora_alpha": 0}, "lora_alpha is 0"),
    ({"target_modules": ["q_proj", "lm_head"]}, "ties the output head to the embeddings.*lm_head"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "ties the output head to the embeddings.*embed_tokens"),
])
def test_what_llama_cpp_cannot_apply_is_refused_before_writing(tied, tmp_path, lora, message):
    model_dir, base = tied
    _adapter(model_dir, tmp_path / "adapter", **lora)
    with pytest.raises(ConfigError, match=message):
        write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="x")
    assert not (tmp_path / "lora.gguf").exists()


def test_other_peft_types_and_other_bases_are_refused(tied, tmp_path):
    from kbit.testing import make_tiny_model

    model_dir, base = tied
    _vera(model_dir, tmp_path / "vera")
    with pytest.raises(ConfigError, match="LoRA adapters only, this one is VERA"):
        write_lora_gguf(tmp_path / "vera", base, tmp_path / "lora.gguf", name="x")
    _adapter(make_tiny_model(tmp_path / "wide", hidden_size=128), tmp_path / "wide-adapter")
    with pytest.raises(ConfigError, match="fits a .* weight but base.gguf's .* pass the base GGUF the adapter was trained on"):
        write_lora_gguf(tmp_path / "wide-adapter", base, tmp_path / "lora.gguf", name="x")
    with pytest.raises(ConfigError, match="is not a PEFT adapter folder"):
        write_lora_gguf(model_dir, base, tmp_path / "lora.gguf", name="x")
    _adapter(model_dir, tmp_path / "adapter")
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="x")
    with pytest.raises(ConfigError, match="is a 'llama' adapter file; kbit writes LoRA GGUFs for llama and qwen2 model files"):
        write_lora_gguf(tmp_path / "adapter", tmp_path / "lora.gguf", tmp_path / "again.gguf", name="x")
    with pytest.raises(ConfigError, match="unknown LoRA GGUF type 'q4_0'"):
        write_lora_gguf(tmp_path / "adapter", base, tmp_path / "other.gguf", name="x", file_type="q4_0")


@pytest.mark.slow
def test_llama_cpp_applies_a_smollm2_adapter_to_the_q4_1_file_people_run(tmp_path):
    """On the shipped Q4_1 SmolLM2 (9 query, 3 key/value heads): llama.cpp's Q4_1 products (activations
    rounded to Q8_1) differ from torch on the dequantized weights by ~1.3 in the logits, so the adapter is
    held to adding no more than that, while it moves the logits by ~17 (figures measured)."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from kbit.core.model.sources import default_gguf_path, resolve_model

    source, base = Path(resolve_model(None).path), default_gguf_path()
    peft_model = _adapter(source, tmp_path / "adapter", r=8, lora_alpha=16)
    report = write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="smollm2-lora", file_type="f16")
    assert report["modules"] == 30 * 7 and report["tensor_types"] == {"F16": 420}
    keys = {k: f.contents() for k, f in GGUFReader(str(tmp_path / "lora.gguf")).fields.items() if k.startswith("general.")}
    assert keys["general.base_model.0.name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2" and keys["general.license"] == "apache-2.0"
    assert keys["general.base_model.0.organization"] == "HuggingFaceTB" and "general.base_model.0.repo_url" not in keys

    text = "<|im_start|>user\nWhat is 12 + 34?<|im_end|>\n<|im_start|>assistant\n46"
    tokens = AutoTokenizer.from_pretrained(source)(text, add_special_tokens=False).input_ids
    expected = _torch_logits(peft_model, tokens)
    with peft_model.disable_adapter():
        expected_base = _torch_logits(peft_model, tokens)
    got, got_base = _llama_cpp_logits(base, tmp_path / "lora.gguf", tokens), _llama_cpp_logits(base, tokens=tokens)
    base_error = np.abs(got_base - expected_base).max()
    assert np.abs(got - expected).max() < 2 * base_error
    assert np.abs(expected - expected_base).max() > 5 * base_error
    # the adapter's own effect, llama.cpp against PEFT: 12% apart measured (36% without the q/k row permutation)
    delta, expected_delta = got - got_base, expected - expected_base
    assert np.linalg.norm(delta - expected_delta) / np.linalg.norm(expected_delta) < 0.2


# apply_lora_gguf reads the file back onto load_gguf(base): the fixtures' bases hold F16-exact weights, so
# that model is the PEFT model's base exactly, and an F32 LoRA file holds PEFT's matrices exactly. Both then
# run PEFT's own LoRA layers on the same numbers: measured bit-equal (0.0); the bound allows float32 rounding.
ROUND_TRIP_BOUND = 1e-6


def _applied(base: Path, lora: Path):
    model, _ = load_gguf(base)
    return apply_lora_gguf(model, lora, base)


@pytest.mark.parametrize("case, lora", [
    ("tied", {}),
    ("tied", {"use_rslora": True}),  # alpha·sqrt(r) in the file, read back as alpha / r: PEFT's alpha / sqrt(r)
    ("tied", {"r": 8, "rank_pattern": {"q_proj": 2, "down_proj": 16}}),
    ("untied", {"target_modules": [*LINEAR, "embed_tokens", "lm_head"]}),
    ("qwen2", {}),
])
def test_apply_lora_gguf_computes_what_the_peft_adapter_did(request, tmp_path, case, lora):
    model_dir, base = request.getfixturevalue(case)
    peft_model = _adapter(model_dir, tmp_path / "adapter", **lora)
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")

    applied = _applied(base, tmp_path / "lora.gguf")
    expected = _torch_logits(peft_model)
    assert np.abs(_torch_logits(applied) - expected).max() <= ROUND_TRIP_BOUND
    with applied.disable_adapter():
        assert np.abs(_torch_logits(applied) - expected).max() > 0.1  # the adapter is there, and it matters
    ranks = {name: module.r["default"] for name, module in applied.named_modules() if hasattr(module, "r")}
    assert ranks == {name: module.r["default"] for name, module in peft_model.named_modules() if hasattr(module, "r")}


def test_apply_lora_gguf_agrees_with_llama_cpp(untied, tmp_path):
    pytest.importorskip("llama_cpp")
    model_dir, base = untied
    _adapter(model_dir, tmp_path / "adapter", target_modules=[*LINEAR, "embed_tokens", "lm_head"])
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")
    got = _torch_logits(_applied(base, tmp_path / "lora.gguf"))
    assert np.abs(_llama_cpp_logits(base, tmp_path / "lora.gguf") - got).max() < BOUND


@pytest.mark.parametrize("file_type", ["f16", "bf16", "q8_0"])
def test_apply_lora_gguf_reads_each_tensor_type(tied, tmp_path, file_type):
    model_dir, base = tied
    peft_model = _adapter(model_dir, tmp_path / "adapter")
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora", file_type=file_type)
    applied = _applied(base, tmp_path / "lora.gguf")

    qtype = getattr(GGMLQuantizationType, file_type.upper())
    for part in ("lora_A", "lora_B"):  # lora_B rows are r = 4 wide: F16 where the type's blocks do not fit
        weight = getattr(peft_model.base_model.model.model.layers[0].self_attn.k_proj, part)["default"].weight
        stored = qtype if part == "lora_A" or file_type != "q8_0" else GGMLQuantizationType.F16
        rounded = gguf.quants.dequantize(gguf.quants.quantize(weight.detach().numpy(), stored), stored)
        read = getattr(applied.base_model.model.model.layers[0].self_attn.k_proj, part)["default"].weight
        np.testing.assert_array_equal(read.detach().numpy(), rounded)


def _rewritten(source: Path, target: Path, *, alpha: float, rename=lambda name: name, edit=lambda name, data: data) -> Path:
    """A copy of the LoRA GGUF ``source`` with another alpha, tensor names (None: left out) or tensor values."""
    reader = GGUFReader(str(source))
    writer = GGUFWriter(str(target), arch=reader.fields["general.architecture"].contents())
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for tensor in reader.tensors:
        if (name := rename(tensor.name)) is not None:
            writer.add_tensor(name, edit(tensor.name, np.array(tensor.data)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def test_an_alpha_of_0_is_scale_1_as_in_llama_cpp(tied, tmp_path):
    model_dir, base = tied
    peft_model = _adapter(model_dir, tmp_path / "adapter", r=4, lora_alpha=4, rank_pattern={"q_proj": 2})
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")
    applied = _applied(base, _rewritten(tmp_path / "lora.gguf", tmp_path / "alpha0.gguf", alpha=0.0))
    scales = {name: module.scaling["default"] for name, module in applied.named_modules() if isinstance(module, LoraLayer)}
    assert len(scales) == 14 and set(scales.values()) == {1.0}
    for name, module in peft_model.named_modules():  # PEFT's q_proj scale is alpha / r = 2: the file's is 1
        if isinstance(module, LoraLayer) and name.endswith("q_proj"):
            module.scaling["default"] = 1.0
    assert np.abs(_torch_logits(applied) - _torch_logits(peft_model)).max() <= ROUND_TRIP_BOUND


def test_apply_lora_gguf_refuses_what_does_not_fit(tied, qwen2, tmp_path):
    model_dir, base = tied
    _adapter(model_dir, tmp_path / "adapter")
    lora = tmp_path / "lora.gguf"
    write_lora_gguf(tmp_path / "adapter", base, lora, name="tiny-lora")
    with pytest.raises(ConfigError, match=r"base.gguf is not a LoRA adapter GGUF \(general.type model, adapter.type unset\)"):
        _applied(base, base)
    qwen2_dir, qwen2_base = qwen2
    _adapter(qwen2_dir, tmp_path / "qwen2-adapter")
    write_lora_gguf(tmp_path / "qwen2-adapter", qwen2_base, tmp_path / "qwen2.gguf", name="x")
    with pytest.raises(ConfigError, match="qwen2.gguf is a LoRA for a 'qwen2' model but base.gguf is a 'llama' model"):
        _applied(base, tmp_path / "qwen2.gguf")
    with pytest.raises(ConfigError, match="the model is a 'qwen2' model but base.gguf a 'llama' one"):
        apply_lora_gguf(load_gguf(qwen2_base)[0], lora, base)
    moved = _rewritten(lora, tmp_path / "moved.gguf", alpha=8.0, rename=lambda name: name.replace("blk.1.", "blk.7."))
    with pytest.raises(ConfigError, match="adapts blk.7.attn_k.weight, which the model has no module for"):
        _applied(base, moved)
    narrow = _rewritten(lora, tmp_path / "narrow.gguf", alpha=8.0,
                        edit=lambda name, data: data[:, :32] if name == "blk.0.attn_v.weight.lora_a" else data)
    with pytest.raises(ConfigError, match=r"adapter module model.layers.0.self_attn.v_proj fits a \(32, 32\) weight but base.gguf's"):
        _applied(base, narrow)
    model = load_gguf(base)[0]
    with pytest.raises(ConfigError, match="holds no LoRA tensors"):
        apply_lora_gguf(model, _rewritten(lora, tmp_path / "empty.gguf", alpha=8.0, rename=lambda name: None), base)


@pytest.mark.parametrize("runtime", ["transformers", "llama.cpp"])
def test_the_check_of_a_lora_gguf_passes_for_its_adapter_and_fails_for_another(tied, tmp_path, runtime):
    # what a gguf run does with its NAME-lora.gguf, in either runtime (transformers: read back by apply_lora_gguf)
    if runtime == "llama.cpp":
        pytest.importorskip("llama_cpp")
    from kbit.core.data import load_task_data
    from kbit.core.errors import FidelityError
    from kbit.core.export.check import Gate, Reference, check_file
    from kbit.core.model.sources import ModelSource, load_tokenizer

    model_dir, base = tied
    peft_model = _adapter(model_dir, tmp_path / "adapter", std=0.3)
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")
    tokenizer = load_tokenizer(ModelSource(path=str(model_dir), name="tiny", origin="local"))
    items = list(load_task_data("arith").held_out[:4])
    figures = check_file(base, Reference(peft_model, tokenizer), "arithmetic", items, Gate.for_type("q8_0"), 4,
                         lora=tmp_path / "lora.gguf", runtime=runtime)
    assert figures["runtime"] == runtime and figures["top1_agreement_within_ties"] == 1.0, figures
    other = _adapter(model_dir, tmp_path / "other", std=0.3, init_lora_weights=False, r=8)
    with pytest.raises(FidelityError, match=rf"check in {runtime} failed on 4 held-out items: top-1 agreement"):
        check_file(base, Reference(other, tokenizer), "arithmetic", items, Gate(min_top1=0.99), 4,
                   lora=tmp_path / "lora.gguf", runtime=runtime)


def test_a_check_in_transformers_compares_a_reference_trained_on_rounded_inputs_without_the_rounding(tied, tmp_path):
    # transformers' reader computes the file in float: a reference trained against llama.cpp's activation
    # rounding (gguf's default) is compared with its rounding off, as the merge check compares it
    import torch

    from kbit.core.data import load_task_data
    from kbit.core.evaluate.reference import torch_logits
    from kbit.core.export.check import Gate, Reference, check_file
    from kbit.core.model.sources import ModelSource, load_tokenizer
    from kbit.plugin import QuantizedLinear

    class Stored(QuantizedLinear):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__(linear, "q8_0")
            self.register_buffer("stored", linear.weight.detach().clone())

        def dequantize(self) -> torch.Tensor:
            return self.stored

    model_dir, base = tied
    peft_model = _adapter(model_dir, tmp_path / "adapter", std=0.3)
    write_lora_gguf(tmp_path / "adapter", base, tmp_path / "lora.gguf", name="tiny-lora")
    tokenizer = load_tokenizer(ModelSource(path=str(model_dir), name="tiny", origin="local"))
    items = list(load_task_data("arith").held_out[:4])
    check = lambda: check_file(base, Reference(peft_model, tokenizer), "arithmetic", items, Gate.for_type("q8_0"), 4,
                               lora=tmp_path / "lora.gguf", runtime="transformers")
    plain = check()
    float_logits = torch_logits(peft_model)(TOKENS)
    for module in list(peft_model.modules()):
        if hasattr(module, "base_layer") and type(module.base_layer) is torch.nn.Linear:
            module.base_layer = Stored(module.base_layer)
    assert not torch.allclose(torch_logits(peft_model)(TOKENS), float_logits, atol=1e-3)  # the rounding shows
    rounded = check()
    assert rounded["max_abs_logit_diff"] == pytest.approx(plain["max_abs_logit_diff"], abs=1e-5)
    assert rounded["top1_agreement"] == plain["top1_agreement"] == 1.0
