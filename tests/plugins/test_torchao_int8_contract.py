import pytest
from kbit.core.system.device import DeviceInfo
from kbit.core.methods.registry import get_method
from kbit.testing import MethodContract
from tests.plugins.conftest import needs_backend, train_tiny

pytestmark = needs_backend("torchao-int8")


class TestTorchaoInt8Contract(MethodContract):
    method = "torchao-int8"


def test_quant_config_is_int8_weight_only_and_merges_into_the_dequantized_int8_weights():
    chosen = get_method("torchao-int8")
    spec = chosen.resolve_spec({}, DeviceInfo.cpu())
    config = chosen.build_quant_config(spec)
    assert type(config).__name__ == "TorchAoConfig"
    assert type(config.quant_type).__name__ == "Int8WeightOnlyConfig"
    policy = chosen.merge_policy(spec)
    assert (policy.action, policy.base) == ("merge", "dequantized")


def test_base_weights_are_int8_tensors(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    chosen = get_method("torchao-int8")
    spec = chosen.resolve_spec({}, DeviceInfo.cpu())
    model = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=chosen.build_quant_config(spec), dtype=torch.float32)
    assert "Int8" in type(model.model.layers[0].self_attn.q_proj.weight).__name__


def test_dequantize_base_gives_the_weights_the_int8_forward_uses(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    chosen = get_method("torchao-int8")
    spec = chosen.resolve_spec({}, DeviceInfo.cpu())
    quantized = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=chosen.build_quant_config(spec),
                                                     dtype=torch.float32)
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        expected = quantized(input_ids=ids).logits
        plain = chosen.dequantize_base(quantized, spec)
        assert all(type(p) is torch.nn.Parameter for p in plain.parameters())
        assert not getattr(plain, "is_quantized", False) and not hasattr(plain.config, "quantization_config")
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_train_end_to_end(tiny, tmp_path):
    # float32 compute: a CPU where kbit's probe picks bf16 (an AMD EPYC: 0.25x float32's step time)
    # rounds the adapter model's logits by ~1e-3, which would hide whether the merge itself is exact
    record = train_tiny(tiny, "torchao-int8", tmp_path / "run", "compute_dtype=float32")
    assert record["artifacts"]["merged"] == "merged"
    assert record["merge"]["base"] == "dequantized"
    assert record["merge"]["top1_agreement"] == 1.0 and record["merge"]["max_abs_logit_diff"] < 1e-3


def test_a_model_whose_layers_torchao_leaves_in_float_is_refused_before_training(kbit_tiny_model_factory):
    """torchao's int8 config quantizes torch Linear layers only: GPT-2's Conv1D layers stay float, and a run
    would train a float model under the method's name."""
    from kbit.core.errors import ConfigError
    from kbit.core.model.bases import load_base, prepare_for_training

    chosen, gpt2 = get_method("torchao-int8"), kbit_tiny_model_factory(model_type="gpt2")
    spec = chosen.resolve_spec({}, DeviceInfo.cpu())
    model = load_base(chosen, spec, str(gpt2))
    with pytest.raises(ConfigError, match="quantized none of this model's 8 linear layers .*float Conv1D"):
        prepare_for_training(chosen, spec, chosen.merge_policy(spec), model)
