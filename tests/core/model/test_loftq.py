"""``-o init=loftq``: the adapter starts by cancelling part of the base's quantization error, for every
method that quantizes its base (qlora's bitsandbytes NF4, qalora's Q4_1 with QA-LoRA groups)."""

import pytest
import torch

from kbit.core.model.adapters import attach_adapter
from kbit.core.model.bases import load_base
from kbit.core.model.loftq import initialise_from_bases
from kbit.plugin import ConfigError, DeviceInfo
from kbit.testing import get_method


def _initialised(method_name: str, model_dir, **options):
    method = get_method(method_name)
    spec = method.resolve_spec({"r": "8", "init": "loftq", **options}, DeviceInfo.cpu())
    model = attach_adapter(method.prepare_model(load_base(method, spec, str(model_dir)), spec), spec)
    return model, initialise_from_bases(model, method, spec, str(model_dir))


@pytest.mark.parametrize("method_name", ["qlora", "qalora"])
def test_the_adapter_starts_closer_to_the_original_weights(kbit_tiny_model_factory, method_name):
    model_dir = kbit_tiny_model_factory(hidden_size=128)
    model, errors = _initialised(method_name, model_dir)
    # a rank-8 SVD takes a share of NF4's error; QA-LoRA can only cancel each block's mean error, a small part of Q4_1's
    share = 0.97 if method_name == "qlora" else 0.999
    assert errors["relative_error_after"] < share * errors["relative_error_before"], errors
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_B["default"].weight.abs().max() > 0
    if method_name == "qalora":  # QA-LoRA's A stays constant within each group of 32 inputs
        a = layer.lora_A["default"].weight
        assert torch.equal(a, a[:, ::32].repeat_interleave(32, dim=1))


def test_the_start_brings_the_logits_closer_to_the_original_model(kbit_tiny_model_factory):
    from kbit.core.model.sources import load_causal_lm

    model_dir = kbit_tiny_model_factory(hidden_size=128)
    ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    original = load_causal_lm(str(model_dir)).eval()
    model, _ = _initialised("qalora", model_dir)
    method = get_method("qalora")
    plain_spec = method.resolve_spec({"r": "8"}, DeviceInfo.cpu())
    plain = attach_adapter(method.prepare_model(load_base(method, plain_spec, str(model_dir)), plain_spec), plain_spec)
    with torch.no_grad():
        reference = original(input_ids=ids).logits
        gap_loftq = (model.eval()(input_ids=ids).logits - reference).abs().mean()
        gap_default = (plain.eval()(input_ids=ids).logits - reference).abs().mean()
    assert gap_loftq < gap_default


@pytest.mark.slow
def test_a_method_without_quantization_error_is_refused_before_anything_is_written(tiny, tmp_path):
    from tests.conftest import run_kbit

    result = run_kbit("train", "--model", str(tiny), "--output", str(tmp_path / "run"), "--method", "lora",
                      "-o", "init=loftq", "--max-steps", "1")
    assert result.returncode == 2 and "no quantization error" in result.stderr and not (tmp_path / "run").exists()


def test_loftq_is_refused_for_a_fake_quant_adapter():
    with pytest.raises(ConfigError, match="nearest to W"):
        get_method("qat").resolve_spec({"init": "loftq"}, DeviceInfo.cpu())


def test_loftq_on_dora_is_refused():
    with pytest.raises(ConfigError, match="init 'loftq'"):
        get_method("lora").resolve_spec({"peft_type": "dora", "init": "loftq"}, DeviceInfo.cpu())
