import pytest

from kbit.plugin import DeviceInfo
from kbit.testing import MethodContract, get_method


class TestQuantoInt8Contract(MethodContract):
    method = "quanto-int8"


class TestQuantoInt4DoraContract(MethodContract):
    method = "quanto-int4"
    options = {"peft_type": "dora", "r": "4"}


@pytest.mark.parametrize("name, bits", [("quanto-int8", 8), ("quanto-int4", 4)])
def test_spec_and_policy(name, bits):
    method = get_method(name)
    assert method.distribution == "kbit-quanto"
    spec = method.resolve_spec({}, DeviceInfo.cpu())
    assert (spec.weights_bits, spec.backend, spec.training.compute_dtype) == (bits, "optimum-quanto", "float32")
    assert type(method.build_quant_config(spec)).__name__ == "QuantoConfig"
    policy = method.merge_policy(spec)
    assert (policy.action, policy.base) == ("merge", "dequantized")
