import pytest
from kbit.testing import MethodContract


class TestQloraContract(MethodContract):
    method = "qlora"


class TestQloraDoraContract(MethodContract):
    method = "qlora"
    options = {"peft_type": "dora", "r": "4"}


def test_adapter_dtype_is_float32_unless_storage_needs_one_dtype():
    from kbit.core.system.device import DeviceInfo
    from kbit.core.methods.registry import get_method

    qlora, cpu = get_method("qlora"), DeviceInfo(kind="cpu")
    assert qlora.resolve_spec({}, cpu).training.adapter_dtype == "float32"
    # FSDP flattens base and adapter together, so a float storage dtype carries over to the adapter
    assert qlora.resolve_spec({"quant_storage": "bfloat16"}, cpu).training.adapter_dtype == "bfloat16"
    assert qlora.resolve_spec({"quant_storage": "bfloat16", "adapter_dtype": "float32"}, cpu).training.adapter_dtype == "float32"
    assert qlora.resolve_spec({"adapter_dtype": "bfloat16"}, cpu).training.adapter_dtype == "bfloat16"


@pytest.mark.slow
def test_fsdp_storage_trains_and_merges(tiny, tmp_path):
    """4-bit codes stored as bfloat16 (FSDP's setting) read as floats that sum to NaN: the check that
    prepare_model leaves base weights alone must still see them as unchanged, and the merge pass."""
    import json

    from tests.conftest import run_kbit

    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(tiny), "--max-steps", "2", "--batch-size", "2", "-o", "r=4",
                      "--max-examples", "40", "--eval-limit", "2", "-o", "quant_storage=bfloat16", "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "kbit.json").read_text())
    assert record["spec"]["extras"]["quant_storage"] == "bfloat16" and record["merge"]["top1_agreement"] >= 0.99


def test_the_merge_base_is_the_4bit_base_as_its_float32_forward_computes(tiny):
    """Trained in bf16, checked and merged in float32: each dequantized layer must hold exactly the
    weights the 4-bit layer multiplies by in float32 (bitsandbytes dequantizes into the load dtype,
    and a bf16 rounding of the NF4 values flipped 2.5% of SmolLM2's top-1 predictions)."""
    import bitsandbytes as bnb
    import torch

    from kbit.core.model.bases import load_base, load_merge_base
    from kbit.core.system.device import DeviceInfo
    from kbit.core.model.merge import computing_in
    from kbit.core.methods.registry import get_method

    qlora = get_method("qlora")
    spec = qlora.resolve_spec({"compute_dtype": "bfloat16"}, DeviceInfo(kind="cpu"))
    quantized = qlora.prepare_model(load_base(qlora, spec, str(tiny)), spec).eval()
    dequantized, described = load_merge_base(qlora, spec, qlora.merge_policy(spec), str(tiny))
    assert "dequantize_base" in described
    layers = {name: m for name, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert layers
    plain = dict(dequantized.named_modules())
    x = torch.randn(3, next(iter(layers.values())).in_features)
    with torch.no_grad(), computing_in(quantized, "float32"):
        for name, layer in layers.items():
            assert plain[name].weight.dtype == torch.float32
            if layer.in_features == x.shape[-1]:
                torch.testing.assert_close(layer(x), plain[name](x), rtol=0, atol=1e-6, msg=name)
        batch = {"input_ids": torch.randint(0, quantized.config.vocab_size, (2, 12))}
        torch.testing.assert_close(quantized(**batch).logits.float(), dequantized(**batch).logits, rtol=0, atol=1e-4)


def test_a_cpu_base_multiplies_by_a_kept_float_copy_bit_for_bit(tiny):
    """The copy is what bitsandbytes dequantizes in each pass: the output and the input gradient are the
    same bits; dropping the copy restores bitsandbytes' layer."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from kbit.plugins._bnb import cache_4bit_weights, drop_4bit_weight_cache

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    plain, cached = (AutoModelForCausalLM.from_pretrained(tiny, quantization_config=config, dtype=torch.float32)
                     for _ in range(2))
    layers = [m for m in cached.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert cache_4bit_weights(cached) == len(layers) > 0
    ids = torch.randint(0, 100, (2, 9))
    results = []
    for model in (plain, cached):
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeddings).logits
        logits.square().sum().backward()
        results.append((logits.detach(), embeddings.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert all(m._dequantized is not None for m in layers)
    drop_4bit_weight_cache(cached)
    assert all(type(m) is bnb.nn.Linear4bit and not hasattr(m, "_dequantized") for m in layers)


def test_the_float_copy_is_kept_only_on_a_cpu_where_it_fits():
    import torch

    from kbit.plugin import dequantized_copy_fits

    layer = torch.nn.Linear(64, 32)
    assert dequantized_copy_fits([layer])
    assert not dequantized_copy_fits([layer], share=0.0)
    assert not dequantized_copy_fits([])
    assert not dequantized_copy_fits([torch.nn.Linear(64, 32, device="meta")])


def test_float_copy_off_keeps_bitsandbytes_layers(tiny):
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM

    from kbit.core.methods.registry import get_method
    from kbit.core.system.device import DeviceInfo

    qlora = get_method("qlora")
    kinds = {}
    for value in ("auto", "off"):
        spec = qlora.resolve_spec({"float_copy": value, "compute_dtype": "float32"}, DeviceInfo.cpu())
        model = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=qlora.build_quant_config(spec),
                                                     dtype=torch.float32)
        model = qlora.prepare_model(model, spec)
        kinds[value] = {type(m).__name__ for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert kinds == {"auto": {"CachedLinear4bit"}, "off": {"Linear4bit"}}


class TestQloraGpt2Contract(MethodContract):
    """GPT-2's layers are transformers' ``Conv1D``: bitsandbytes quantizes them as linear layers on the
    transposed weights, and the merged model must be saved as GPT-2 stores them."""

    method = "qlora"
    tiny_config = {"model_type": "gpt2"}
