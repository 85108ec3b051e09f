import pytest

from kbit.core.system.device import DeviceInfo
from kbit.core.methods.registry import get_method
from kbit.testing import MethodContract
from tests.plugins.conftest import train_tiny


class TestLoraContract(MethodContract):
    method = "lora"


class TestLoraGpt2Contract(MethodContract):
    """GPT-2's transformers ``Conv1D`` layers: the adapter is attached as transposed (``fan_in_fan_out``)."""

    method = "lora"
    tiny_config = {"model_type": "gpt2"}


class TestLoraVeraContract(MethodContract):
    method = "lora"
    options = {"peft_type": "vera", "r": "8"}


def test_base_stays_in_compute_dtype_and_merges_into_the_original():
    chosen = get_method("lora")
    cpu = chosen.resolve_spec({}, DeviceInfo.cpu())
    assert chosen.build_quant_config(cpu) is None
    assert (cpu.training.compute_dtype, cpu.weights_bits) == ("float32", 32)
    gpu = chosen.resolve_spec({}, DeviceInfo(kind="cuda", name="gpu", supports_bf16=True, memory_bytes=1 << 34))
    assert (gpu.training.compute_dtype, gpu.weights_bits) == ("bfloat16", 16)
    policy = chosen.merge_policy(cpu)
    assert (policy.action, policy.base) == ("merge", "original")


@pytest.mark.slow
def test_train_end_to_end(tiny, tmp_path):
    record = train_tiny(tiny, "lora", tmp_path / "run")
    assert record["artifacts"]["merged"] == "merged" and "quantized" not in record["artifacts"]
    assert record["merge"]["top1_agreement"] == pytest.approx(1.0)
