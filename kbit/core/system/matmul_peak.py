"""The machine's matrix-product peak: the best GFLOP/s large matmuls have reached here, in this dtype.

It is the denominator of a run's ``mfu``: what the steps achieved against what this device, dtype
and thread count can do at best, measured in process (a vendor's datasheet figure is not what
this torch build reaches on this machine). Each call measures again (a fraction of a second) and
keeps the best figure ever measured in ``$KBIT_CACHE/matmul-peak.json``, keyed like the bf16 probe's
(CPU model, flags, torch version, threads; a GPU's name) and the dtype: a measurement taken while
other work loads the machine reads low and must not lower the peak (delete the file to start over).

Imported lazily (imports torch).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

CACHE_FILE = "matmul-peak.json"
PROBE_VERSION = 1


def matmul_peak_gflops(device: str, dtype: torch.dtype, cache_dir: Path | None = None) -> float:
    """The best matmul GFLOP/s measured on ``device`` ("cpu", "cuda", …) in ``dtype``, this call's included."""
    from kbit.core.system.cpu_probe import cached_measurement

    return cached_measurement(CACHE_FILE, peak_key(device, dtype), "gflops",
                              lambda: measure_matmul_gflops(device, dtype), cache_dir, keep_best=True)


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


def measure_matmul_gflops(device: str, dtype: torch.dtype, sizes: tuple[int, ...] | None = None,
                          rounds: int = 3, long_enough_s: float = 0.1) -> float:
    """The best GFLOP/s over ``rounds`` of each ``size``³ matrix product in ``sizes`` (on a CPU 512, 1024
    and 2048, on an accelerator 4096 and 8192), after a warm-up of each. Sizes are taken in order and
    the larger ones skipped once a timed product takes ``long_enough_s``: the kernel, not the call, is
    timed by then, and a dtype this device emulates (bf16 on a CPU without it is ~1 GFLOP/s, a 2048³
    product 20 s) would otherwise cost minutes on every run."""
    kind = torch.device(device).type
    sizes = sizes or ((512, 1024, 2048) if kind == "cpu" else (4096, 8192))
    device_module = getattr(torch, kind, None) if kind != "cpu" else None
    synchronize = getattr(device_module, "synchronize", None) or (lambda: None)
    repeats = 1 if kind == "cpu" else 20
    best = 0.0
    generator = torch.Generator().manual_seed(0)
    for size in sorted(sizes):
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        a @ b
        synchronize()
        fastest = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(repeats):
                a @ b
            synchronize()
            fastest = min(fastest, time.perf_counter() - started)
        best = max(best, 2 * size**3 * repeats / fastest / 1e9)
        if fastest >= long_enough_s:
            break
    return best
