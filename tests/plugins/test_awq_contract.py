import pytest

from kbit.core.device import DeviceInfo
from kbit.core.registry import get_method
from kbit.testing import MethodContract
from tests.plugins._ptq_checks import FAST, train_and_quantize
from tests.plugins.conftest import needs_backend

pytestmark = needs_backend("awq")


class TestAwqContract(MethodContract):
    method = "awq"
    options = FAST


def test_defaults_are_asymmetric_w4():
    spec = get_method("awq").resolve_spec({}, DeviceInfo.cpu())
    assert (spec.weights_bits, spec.symmetric, spec.extras["scheme"], spec.extras["duo_scaling"]) == (4, False, "W4A16", True)


def test_pin_memory_workaround_is_still_needed_on_cpu():
    """Fails once llm-compressor stops pinning without an accelerator: then drop the workaround in kbit.plugins.awq."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    from kbit.plugins.awq import unpinned_cache_without_accelerator

    if torch.accelerator.is_available():
        pytest.skip("an accelerator is available: pinning works and the workaround is inactive")
    cache = IntermediatesCache.empty(1, torch.device("cpu"))
    cache.update(0, {"hidden_states": torch.zeros(2, 3)})
    with unpinned_cache_without_accelerator():
        cache.pin_memory(0)  # a no-op under the workaround
    try:
        cache.pin_memory(0)
    except RuntimeError as exc:
        assert "accelerator" in str(exc)
    else:
        pytest.fail("IntermediatesCache.pin_memory works on CPU now; remove unpinned_cache_without_accelerator")
    assert IntermediatesCache.pin_memory is not None


def test_train_end_to_end_with_awq(tiny_model, tmp_path):
    train_and_quantize(tiny_model, "awq", tmp_path / "run", bits=4, symmetric=False)
