"""Gradient checkpointing auto: decided from the estimated memory of a step against free memory."""

import pytest

from kbit.core.system.device import DeviceInfo, free_memory_bytes
from kbit.core.train.sizing import CHECKPOINT_ABOVE, activation_bytes_per_sample, decide_checkpointing

MIB, GIB = 1 << 20, 1 << 30
SMOLLM2 = {"hidden_size": 576, "layers": 30, "vocab_size": 49152}  # SmolLM2-135M


def _decide(requested="auto", free=20 * GIB, batch=8, length=64, model=540 * MIB):
    return decide_checkpointing(requested, **SMOLLM2, length=length, batch_size=batch, model_bytes=model, free_bytes=free)


def test_checkpointing_is_off_where_the_step_fits_and_on_where_it_does_not():
    off, estimates = _decide(free=20 * GIB)
    assert off.value is False and "recomputing would only cost time" in off.reason
    assert estimates["estimated_bytes_with"] < estimates["estimated_bytes_without"] < CHECKPOINT_ABOVE * 20 * GIB
    assert estimates["free_bytes"] == 20 * GIB
    on, estimates = _decide(free=estimates["estimated_bytes_without"])  # a step would take all free memory
    assert on.value is True and "over 50% of the" in on.reason
    # Longer sequences and larger batches need more: the same machine checkpoints a heavier step.
    assert _decide(free=3 * GIB, batch=16, length=256)[0].value is True
    assert _decide(free=3 * GIB, batch=4, length=48)[0].value is False


@pytest.mark.parametrize("requested, value", [("true", True), ("false", False)])
def test_an_explicit_setting_is_kept_whatever_the_memory(requested, value):
    for free in (1 * MIB, 1000 * GIB):
        decision, _ = _decide(requested, free=free)
        assert (decision.value, decision.reason) == (value, "requested")


def test_activation_estimate_grows_with_length_and_shrinks_with_checkpointing():
    full = activation_bytes_per_sample(**SMOLLM2, length=128, checkpointing=False)
    assert activation_bytes_per_sample(**SMOLLM2, length=256, checkpointing=False) == 2 * full
    assert activation_bytes_per_sample(**SMOLLM2, length=128, checkpointing=True) < full / 4


def test_free_memory_is_memavailable_on_a_cpu():
    cpu = DeviceInfo.cpu(memory_bytes=32 * GIB)
    meminfo = "MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n"
    assert free_memory_bytes(cpu, meminfo) == 12000000 * 1024
    assert free_memory_bytes(cpu, "MemTotal: 1 kB\n") == 32 * GIB  # no MemAvailable line: the total
    assert 0 < free_memory_bytes(DeviceInfo.cpu()) <= DeviceInfo.cpu().memory_bytes
