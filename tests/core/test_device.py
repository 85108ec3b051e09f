"""Which device a run uses and what follows from it, on this machine and with other devices simulated."""

from __future__ import annotations

import pytest

from kbit.core.device import (
    DeviceInfo,
    detect_device,
    device_map_for,
    peak_memory_bytes,
    resolve_compute_dtype,
    trainer_device_args,
)
from kbit.core.registry import get_method

GIB = 1 << 30
CUDA = DeviceInfo(kind="cuda", name="NVIDIA H200", supports_bf16=True, memory_bytes=140 * GIB)
OLD_CUDA = DeviceInfo(kind="cuda", name="Tesla T4", supports_bf16=False, memory_bytes=16 * GIB)
MPS = DeviceInfo(kind="mps", name="Apple MPS", supports_bf16=True, memory_bytes=24 * GIB)
OLD_MPS = DeviceInfo(kind="mps", name="Apple MPS", supports_bf16=False, memory_bytes=8 * GIB)  # macOS < 14
XPU = DeviceInfo(kind="xpu", name="Intel Data Center GPU Max 1100", supports_bf16=True, memory_bytes=48 * GIB)
CPU = DeviceInfo.cpu(memory_bytes=24 * GIB)
BF16_CPU = DeviceInfo.cpu(memory_bytes=24 * GIB, supports_bf16=True)  # e.g. AMX or avx512_bf16


@pytest.mark.parametrize("device, dtype", [
    (CUDA, "bfloat16"), (OLD_CUDA, "float16"), (MPS, "bfloat16"), (OLD_MPS, "float16"), (XPU, "bfloat16"),
    (CPU, "float32"), (BF16_CPU, "float32"),
])
def test_auto_compute_dtype_follows_the_device(device, dtype):
    assert resolve_compute_dtype("auto", device) == dtype
    assert resolve_compute_dtype("float16", device) == "float16"  # an explicit dtype is kept


@pytest.mark.parametrize("device", [CUDA, MPS, XPU])
def test_an_accelerator_is_used_never_the_forced_cpu(device):
    compute = resolve_compute_dtype("auto", device)
    assert trainer_device_args(device, compute) == {"use_cpu": False, "bf16": compute == "bfloat16",
                                                    "fp16": compute == "float16"}
    assert device_map_for(device) == {"": device.kind}


def test_the_cpu_is_forced_only_on_a_cpu_only_machine():
    assert trainer_device_args(CPU, "float32") == {"use_cpu": True, "bf16": False, "fp16": False}
    assert trainer_device_args(BF16_CPU, "bfloat16") == {"use_cpu": True, "bf16": True, "fp16": False}
    assert device_map_for(CPU) is None


@pytest.mark.parametrize("device, checkpointing, dtype", [
    (MPS, True, "bfloat16"), (XPU, True, "bfloat16"), (OLD_CUDA, True, "float16"), (CPU, False, "float32"),
])
def test_method_specs_follow_the_device(device, checkpointing, dtype):
    spec = get_method("qlora").resolve_spec({}, device)
    assert spec.training.compute_dtype == dtype and spec.training.merge_dtype == dtype
    assert spec.training.gradient_checkpointing is checkpointing  # "auto": on wherever memory is the accelerator's


def test_device_kinds_are_torch_device_types():
    with pytest.raises(ValueError):
        DeviceInfo(kind="CUDA:0")
    assert not CPU.accelerator and MPS.accelerator


def test_detected_device_is_the_one_the_trainer_would_pick(tmp_path):
    from transformers import TrainingArguments

    device = detect_device()
    assert device.memory_bytes > 0 and device.name
    # Unforced, the trainer (accelerate) places the model on the same device kind kbit detected.
    unforced = TrainingArguments(output_dir=str(tmp_path), use_cpu=False, report_to=[])
    assert unforced.device.type == device.kind
    forced = TrainingArguments(output_dir=str(tmp_path), report_to=[], **trainer_device_args(device, "float32"))
    assert forced.device.type == device.kind
    assert peak_memory_bytes(device) > 0
