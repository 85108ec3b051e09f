"""The device a run computes on and the dtype that follows from it.

The device is the accelerator torch itself would use (``torch.accelerator``: CUDA or ROCm, Intel
XPU, Apple MPS, ...), else the CPU. Compute dtype "auto" means bfloat16 on an accelerator that
supports it (float16 on one that does not); on a CPU, bfloat16 where the CPU has native bf16
instructions (AVX512-BF16 or AMX) and a bf16 probe runs faster than float32 there
(``kbit.core.system.cpu_probe``), float32 elsewhere (bf16 emulated in AVX2/AVX512 code is several times
slower than float32).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class DeviceInfo:
    """Where training runs.

    - ``kind``: the torch device type: "cpu", or the accelerator's ("cuda", "xpu", "mps", ...).
    - ``name``: what the hardware calls itself.
    - ``supports_bf16``: bfloat16 arithmetic runs natively here (on a CPU: ``cpu_bf16_flags``).
    - ``bf16_evidence``: what ``supports_bf16`` was read from, for the record.
    - ``memory_bytes``: the memory a run may use (the accelerator's own, or system memory on a CPU).
    - ``bf16_time_ratio``: on a CPU with native bf16, bf16 time / float32 time measured by
      ``kbit.core.system.cpu_probe`` (below 1: bf16 is faster); None where not measured.
    """

    kind: str = attrs.field(validator=attrs.validators.matches_re(r"^[a-z][a-z0-9_]*$"))
    name: str = "cpu"
    supports_bf16: bool = False
    memory_bytes: int = 0
    bf16_evidence: str = ""
    bf16_time_ratio: float | None = None

    @property
    def accelerator(self) -> bool:
        """True on anything but the CPU."""
        return self.kind != "cpu"

    @classmethod
    def cpu(cls, memory_bytes: int | None = None, supports_bf16: bool = False, bf16_evidence: str = "",
            bf16_time_ratio: float | None = None) -> DeviceInfo:
        """A CPU; ``supports_bf16`` as given (``detect_device`` reads it from the CPU's flags and
        measures ``bf16_time_ratio``)."""
        if memory_bytes is None:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(kind="cpu", name="cpu", supports_bf16=supports_bf16, memory_bytes=memory_bytes,
                   bf16_evidence=bf16_evidence, bf16_time_ratio=bf16_time_ratio)


@attrs.frozen
class Decision:
    """A value kbit chose for the user (``auto``), and why, as recorded in ``kbit.json``."""

    value: Any
    reason: str


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (Cooper Lake / Zen 4+, Sapphire Rapids+)
CPUINFO = Path("/proc/cpuinfo")


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo, empty where there is none."""
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The native-bf16 instruction-set flags among ``CPU_BF16_FLAGS`` that ``cpuinfo`` (the text of
    ``/proc/cpuinfo``; read from there when None) lists; empty where there is no such file.

    Read from the flags rather than torch: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True
    on any AVX512 CPU, where oneDNN emulates bf16, which is slower than float32.
    """
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def host_cpu(cpuinfo: str | None = None, measure: Callable[[], float] | None = None) -> DeviceInfo:
    """This machine's CPU as a training device: native bf16 read from its flags (``cpuinfo``, the text
    of /proc/cpuinfo, read when None) and, where it has them, bf16's speed against float32 measured
    (``measure``, default ``kbit.core.system.cpu_probe``: cached per CPU and torch version; imports torch)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    flags = cpu_bf16_flags(cpuinfo)
    evidence = (f"{', '.join(flags)} in /proc/cpuinfo" if flags
                else "no " + " or ".join(CPU_BF16_FLAGS) + " in /proc/cpuinfo")
    if flags and measure is None:
        from kbit.core.system.cpu_probe import bf16_time_ratio

        measure = functools.partial(bf16_time_ratio, cpuinfo)
    ratio = measure() if flags else None
    return DeviceInfo.cpu(supports_bf16=bool(flags), bf16_evidence=evidence, bf16_time_ratio=ratio)


def detect_device() -> DeviceInfo:
    """The accelerator torch would train on (its first device), else the CPU. Imports torch."""
    import torch

    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return host_cpu()
    kind = accelerator.type
    module = torch.get_device_module(kind)
    if kind == "mps":
        # Apple GPUs share system memory; Metal reports how much of it one process should use.
        return DeviceInfo(kind=kind, name="Apple MPS", supports_bf16=_bf16_on_accelerator(),
                          memory_bytes=int(module.recommended_max_memory()))
    index = torch.accelerator.current_device_index()
    _free, total = torch.accelerator.get_memory_info(index)
    return DeviceInfo(kind=kind, name=str(module.get_device_name(index)), supports_bf16=_bf16_on_accelerator(),
                      memory_bytes=int(total))


def _bf16_on_accelerator() -> bool:
    # transformers knows each backend's own test (CUDA compute capability, XPU, macOS >= 14 for MPS, ...).
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


def decide_compute_dtype(requested: str, device: DeviceInfo) -> Decision:
    """The concrete dtype name for ``requested`` ("auto" or a dtype name) on ``device``, and why."""
    if requested != "auto":
        return Decision(requested, "requested")
    evidence = f" ({device.bf16_evidence})" if device.bf16_evidence else ""
    if device.accelerator:
        if device.supports_bf16:
            return Decision("bfloat16", f"auto: {device.kind} supports bfloat16{evidence}")
        return Decision("float16", f"auto: {device.kind} has no bfloat16{evidence}, float16 mixed precision instead")
    if device.supports_bf16:
        ratio = device.bf16_time_ratio
        if ratio is None:
            return Decision("bfloat16", f"auto: the CPU has native bf16{evidence}")
        measured = f"the bf16 probe took {ratio:.2f}× float32's time here (kbit.core.system.cpu_probe)"
        if ratio < 1:
            return Decision("bfloat16", f"auto: the CPU has native bf16{evidence}; {measured}")
        return Decision("float32", f"auto: the CPU has native bf16{evidence}, but {measured}")
    return Decision("float32", f"auto: the CPU has no native bf16{evidence}; emulated bf16 is slower than float32")


def resolve_compute_dtype(requested: str, device: DeviceInfo) -> str:
    """Turn "auto" into a concrete dtype name for ``device``; other names pass through."""
    return decide_compute_dtype(requested, device).value


def trainer_device_args(device: DeviceInfo, compute_dtype: str) -> dict[str, Any]:
    """The ``TrainingArguments`` that follow from the device and compute dtype.

    The CPU is forced only where there is nothing else; on an accelerator the trainer (accelerate)
    places the model on it. bf16/fp16 turn on mixed precision for the matching compute dtype.
    """
    return {
        "use_cpu": not device.accelerator,
        "bf16": compute_dtype == "bfloat16",
        "fp16": compute_dtype == "float16",
    }


def device_map_for(device: DeviceInfo) -> dict[str, str] | None:
    """``from_pretrained``'s device_map that puts a whole model on ``device`` (None: stay on the CPU)."""
    return {"": device.kind} if device.accelerator else None


def free_memory_bytes(device: DeviceInfo, meminfo: str | None = None) -> int:
    """Memory a run can still take now: the accelerator's free memory, or on a CPU the kernel's
    MemAvailable (``meminfo``: the text of /proc/meminfo, read when None; total memory where there is none)."""
    if device.accelerator and device.kind != "mps":
        import torch

        return int(torch.accelerator.get_memory_info(torch.accelerator.current_device_index())[0])
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return device.memory_bytes
    for line in meminfo.splitlines():
        key, _, value = line.partition(":")
        if key == "MemAvailable":
            return int(value.split()[0]) * 1024  # kB
    return device.memory_bytes


def peak_memory_bytes(device: DeviceInfo) -> int:
    """The most memory this process has held on ``device`` (the accelerator's, or resident memory)."""
    import resource
    import sys

    import torch

    if device.accelerator and device.kind != "mps":  # Metal keeps no peak statistic
        return int(torch.accelerator.max_memory_allocated())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def release_memory(device: DeviceInfo) -> None:
    """Hand cached accelerator memory back after a model is dropped (nothing to do on a CPU)."""
    if device.accelerator:
        import torch

        torch.accelerator.empty_cache()


def torch_dtype(name: str):
    """The torch dtype for a dtype name ("float32", "bfloat16", "float16")."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cpu_logits(model: Any, inputs: dict[str, Any]) -> Any:
    """``model(**inputs).logits`` as float32 on the CPU, the inputs first moved to the model's input device.

    Comparisons of two models (merge check, export check) run each where it lives: the trained model
    on the accelerator, a reloaded base or an exported file often on the CPU.
    """
    embeddings = getattr(model, "get_input_embeddings", None)
    if embeddings is not None:
        device = embeddings().weight.device
    else:  # any other module: where its first parameter lives, if it has one
        device = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    if device is not None:
        inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
    return model(**inputs).logits.float().cpu()
