"""Which device a run uses and what follows from it, on this machine and with other devices simulated."""

from __future__ import annotations

import pytest

from kbit.core.system.device import (
    DeviceInfo,
    cpu_bf16_flags,
    decide_compute_dtype,
    detect_device,
    host_cpu,
    device_map_for,
    peak_memory_bytes,
    resolve_compute_dtype,
    trainer_device_args,
)
from kbit.core.methods.registry import get_method

GIB = 1 << 30
CUDA = DeviceInfo(kind="cuda", name="NVIDIA H200", supports_bf16=True, memory_bytes=140 * GIB)
OLD_CUDA = DeviceInfo(kind="cuda", name="Tesla T4", supports_bf16=False, memory_bytes=16 * GIB)
MPS = DeviceInfo(kind="mps", name="Apple MPS", supports_bf16=True, memory_bytes=24 * GIB)
OLD_MPS = DeviceInfo(kind="mps", name="Apple MPS", supports_bf16=False, memory_bytes=8 * GIB)  # macOS < 14
XPU = DeviceInfo(kind="xpu", name="Intel Data Center GPU Max 1100", supports_bf16=True, memory_bytes=48 * GIB)
CPU = DeviceInfo.cpu(memory_bytes=24 * GIB)
BF16_CPU = DeviceInfo.cpu(memory_bytes=24 * GIB, supports_bf16=True)  # e.g. AMX or avx512_bf16, not measured
FAST_BF16_CPU = DeviceInfo.cpu(memory_bytes=24 * GIB, supports_bf16=True, bf16_time_ratio=0.82)  # measured on an AMD EPYC
SLOW_BF16_CPU = DeviceInfo.cpu(memory_bytes=24 * GIB, supports_bf16=True, bf16_time_ratio=1.45)  # an Intel Xeon without AMX


@pytest.mark.parametrize("device, dtype", [
    (CUDA, "bfloat16"), (OLD_CUDA, "float16"), (MPS, "bfloat16"), (OLD_MPS, "float16"), (XPU, "bfloat16"),
    (CPU, "float32"), (BF16_CPU, "bfloat16"), (FAST_BF16_CPU, "bfloat16"), (SLOW_BF16_CPU, "float32"),
])
def test_auto_compute_dtype_follows_the_device(device, dtype):
    assert resolve_compute_dtype("auto", device) == dtype
    assert resolve_compute_dtype("float16", device) == "float16"  # an explicit dtype is kept


# /proc/cpuinfo excerpts: an AMD EPYC (Zen 4) with AVX512-BF16, an Intel Sapphire Rapids with AMX, a Skylake with
# AVX512 but no native bf16, and an AVX2-only desktop CPU.
ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC 9454\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_fp16 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n"
SKYLAKE = "processor\t: 0\nmodel name\t: Intel Xeon Gold 6148\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nbugs\t\t: avx512_bf16\n"  # a flag name outside "flags" is not a flag


@pytest.mark.parametrize("cpuinfo, flags, ratio, dtype", [
    (ZEN4, ("avx512_bf16",), 0.82, "bfloat16"), (SAPPHIRE, ("amx_bf16",), 0.6, "bfloat16"),
    (ZEN4, ("avx512_bf16",), 1.45, "float32"),  # native bf16, but measured slower than float32 on this CPU
    (SKYLAKE, (), None, "float32"), (AVX2, (), None, "float32"), ("", (), None, "float32"),
])
def test_auto_on_a_cpu_is_bf16_exactly_where_the_cpu_has_native_bf16_and_it_measures_faster(cpuinfo, flags, ratio, dtype):
    assert cpu_bf16_flags(cpuinfo) == flags
    measured = []
    cpu = host_cpu(cpuinfo, measure=lambda: measured.append(ratio) or ratio)
    assert measured == ([ratio] if flags else [])  # measured only where there is native bf16 to measure
    assert cpu.supports_bf16 is bool(flags) and not cpu.accelerator and cpu.bf16_time_ratio == ratio
    decision = decide_compute_dtype("auto", cpu)
    assert decision.value == dtype
    assert ("native bf16" in decision.reason) and (flags[0] in decision.reason if flags else "no avx512_bf16" in decision.reason)
    assert (f"{ratio:.2f}×" in decision.reason) if flags else "probe" not in decision.reason
    spec = get_method("qlora").resolve_spec({}, cpu)
    assert spec.training.compute_dtype == dtype
    assert spec.training.merge_dtype == "float32"  # a bf16 merge would round a short run's update away
    assert spec.training.adapter_dtype == "float32"  # the adapter itself stays float32 either way (Adam, --resume)
    assert get_method("lora").resolve_spec({"compute_dtype": "float32"}, cpu).training.compute_dtype == "float32"
    assert decide_compute_dtype("float32", cpu).reason == "requested"


def test_this_machine_reads_its_own_cpu_flags():
    from pathlib import Path

    device = detect_device()
    if device.accelerator or not Path("/proc/cpuinfo").exists():
        pytest.skip("needs a CPU-only Linux machine")
    text = Path("/proc/cpuinfo").read_text()
    assert device.supports_bf16 is any(f" {flag}" in text for flag in ("avx512_bf16", "amx_bf16"))
    assert device.bf16_evidence.endswith("in /proc/cpuinfo")
    assert (device.bf16_time_ratio is not None) is device.supports_bf16  # measured where bf16 is native


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
    assert spec.training.compute_dtype == dtype and spec.training.merge_dtype == (dtype if device.accelerator else "float32")
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
