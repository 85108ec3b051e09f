"""The machine's matrix-product peak: the GFLOP/s one large matmul reaches here, measured once and cached.

It is the denominator of a run's ``mfu``: what the steps achieved against what this device, dtype
and thread count can do at best, measured in process (a vendor's datasheet figure is not what
this torch build reaches on this machine). The cache, ``$KBIT_CACHE/matmul-peak.json``, is keyed
like the bf16 probe's (CPU model, flags, torch version, threads; a GPU's name) and the dtype; delete
it to measure again.

Imported lazily (imports torch).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

CACHE_FILE = "matmul-peak.json"
PROBE_VERSION = 1


def matmul_peak_gflops(device: str, dtype: torch.dtype, cache_dir: Path | None = None) -> float:
    """The measured matmul GFLOP/s of ``device`` ("cpu", "cuda", …) in ``dtype``, from the cache when known."""
    from kbit.core.system.cpu_probe import cached_measurement

    return cached_measurement(CACHE_FILE, peak_key(device, dtype), "gflops",
                              lambda: measure_matmul_gflops(device, dtype), cache_dir)


def peak_key(device: str, dtype: torch.dtype) -> str:
    """What the peak depends on: the processor (and its flags), torch, threads, the dtype, the probe."""
    kind = torch.device(device).type
    if kind == "cpu":
        from kbit.core.system.cpu_probe import probe_key
        from kbit.core.system.device import read_cpuinfo

        where = probe_key(read_cpuinfo())
    else:
        name = torch.cuda.get_device_name(device) if kind == "cuda" else kind
        where = f"{name} | torch {torch.__version__}"
    return f"matmul v{PROBE_VERSION} | {where} | {str(dtype).removeprefix('torch.')}"


def measure_matmul_gflops(device: str, dtype: torch.dtype, size: int | None = None, rounds: int = 7) -> float:
    """Median GFLOP/s over ``rounds`` of a ``size``³ matrix product (2048 on a CPU, 8192 on an
    accelerator: large enough that the kernel, not the call, is timed), after a warm-up."""
    kind = torch.device(device).type
    size = size or (2048 if kind == "cpu" else 8192)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    synchronize = getattr(getattr(torch, kind, None), "synchronize", lambda: None) if kind != "cpu" else (lambda: None)
    out = a @ b
    out = a @ b
    synchronize()
    repeats = 1 if kind == "cpu" else 20
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            out = a @ b
        synchronize()
        seconds.append((time.perf_counter() - started) / repeats)
    del out
    return 2 * size**3 / statistics.median(seconds) / 1e9
