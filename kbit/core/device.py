"""The device a run computes on and the dtype that follows from it.

Compute dtype "auto" means bfloat16 on a GPU that supports it and float32 elsewhere: on a CPU,
bf16 matmuls are an order of magnitude slower than fp32 (see BENCHMARKS.md, compute dtype).
"""

from __future__ import annotations

import os

import attrs


@attrs.frozen
class DeviceInfo:
    """Where training runs: ``kind`` is "cuda" or "cpu"; ``memory_bytes`` is what a run may use."""

    kind: str = attrs.field(validator=attrs.validators.in_(("cpu", "cuda")))
    name: str = "cpu"
    supports_bf16: bool = False
    memory_bytes: int = 0

    @classmethod
    def cpu(cls, memory_bytes: int | None = None) -> DeviceInfo:
        if memory_bytes is None:
            memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(kind="cpu", name="cpu", supports_bf16=False, memory_bytes=memory_bytes)


def detect_device() -> DeviceInfo:
    """The first CUDA device if there is one, else the CPU. Imports torch."""
    import torch

    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo(
            kind="cuda",
            name=props.name,
            supports_bf16=torch.cuda.is_bf16_supported(),
            memory_bytes=props.total_memory,
        )
    return DeviceInfo.cpu()


def resolve_compute_dtype(requested: str, device: DeviceInfo) -> str:
    """Turn "auto" into a concrete dtype name for ``device``; other names pass through."""
    if requested != "auto":
        return requested
    if device.kind == "cuda":
        return "bfloat16" if device.supports_bf16 else "float16"
    return "float32"


def torch_dtype(name: str):
    """The torch dtype for a dtype name ("float32", "bfloat16", "float16")."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
