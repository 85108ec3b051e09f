"""The device a run computes on and the dtype that follows from it.

The device is the accelerator torch itself would use (``torch.accelerator``: CUDA or ROCm, Intel
XPU, Apple MPS, ...), else the CPU. Compute dtype "auto" means bfloat16 on an accelerator that
supports it (float16 on one that does not) and float32 on a CPU: there bf16 matmuls are an order
of magnitude slower than fp32 (see BENCHMARKS.md, compute dtype).
"""

from __future__ import annotations

import os
from typing import Any

import attrs


@attrs.frozen
class DeviceInfo:
    """Where training runs.

    - ``kind``: the torch device type: "cpu", or the accelerator's ("cuda", "xpu", "mps", ...).
    - ``name``: what the hardware calls itself.
    - ``supports_bf16``: bfloat16 arithmetic runs natively here. Meaningful for every kind, CPUs
      included, though "auto" does not yet pick bf16 on a CPU (see ``resolve_compute_dtype``).
    - ``memory_bytes``: the memory a run may use (the accelerator's own, or system memory on a CPU).
    """

    kind: str = attrs.field(validator=attrs.validators.matches_re(r"^[a-z][a-z0-9_]*$"))
    name: str = "cpu"
    supports_bf16: bool = False
    memory_bytes: int = 0

    @property
    def accelerator(self) -> bool:
        """True on anything but the CPU."""
        return self.kind != "cpu"

    @classmethod
    def cpu(cls, memory_bytes: int | None = None, supports_bf16: bool = False) -> DeviceInfo:
        if memory_bytes is None:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(kind="cpu", name="cpu", supports_bf16=supports_bf16, memory_bytes=memory_bytes)


def detect_device() -> DeviceInfo:
    """The accelerator torch would train on (its first device), else the CPU. Imports torch."""
    import torch

    accelerator = torch.accelerator.current_accelerator(check_available=True)
    if accelerator is None:
        return DeviceInfo.cpu()
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


def resolve_compute_dtype(requested: str, device: DeviceInfo) -> str:
    """Turn "auto" into a concrete dtype name for ``device``; other names pass through."""
    if requested != "auto":
        return requested
    if device.accelerator:
        return "bfloat16" if device.supports_bf16 else "float16"
    return "float32"  # on a CPU, even one with native bf16, until that is measured faster here


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
