"""Whether bfloat16 trains faster than float32 on this CPU: measured once per CPU and torch, then cached.

Native bf16 instructions (AVX512-BF16, AMX) do not make bf16 training faster everywhere: on some
machines a bf16 step is faster than float32, on others slower (BENCHMARKS.md, item 7). So
``compute_dtype=auto`` asks this probe rather than the CPU flags alone.

The probe times what dominates a step: a transformer MLP's matrix products forward and backward,
with frozen weights (as an adapter trains on a frozen base), in bf16 and in float32, alternating,
and keeps the median ratio. It takes about a second and is cached in ``$KBIT_CACHE/cpu-probe.json``
keyed by the CPU model, its flags, torch's version and thread count; delete the file to measure again.

Imported lazily (imports torch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

PROBE_VERSION = 1
CACHE_FILE = "cpu-probe.json"


def probe_key(cpuinfo: str) -> str:
    """What the measurement depends on: CPU model, its flags, torch version and threads, the probe."""
    model, flags = "", ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = " ".join(sorted(value.split()))
    flags_digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"v{PROBE_VERSION} | {model or 'unknown CPU'} | flags {flags_digest} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def bf16_time_ratio(cpuinfo: str, cache_dir: Path | None = None,
                    measure: Callable[[], float] | None = None) -> float:
    """bf16 time / float32 time of the probe on this CPU (below 1: bf16 is faster), from the cache
    when this CPU and torch were measured before."""
    return cached_measurement(CACHE_FILE, probe_key(cpuinfo), "ratio", measure or measure_bf16_time_ratio, cache_dir)


def cached_measurement(file: str, key: str, field: str, measure: Callable[[], float],
                       cache_dir: Path | None = None, keep_best: bool = False) -> float:
    """``measure()``, or what it returned before for ``key``, as ``field`` of the entry ``key`` in
    ``$KBIT_CACHE/file``; a cache that cannot be read or written is skipped (measured again).

    ``keep_best``: measure every time and keep the highest value ever measured (a peak: a measurement
    taken while other work loaded the machine reads low, and must not stand for the machine's best).
    """
    from kbit.core.system.cache import cache_root
    from kbit.core.runs.folder import write_json_atomic

    path = (cache_dir or cache_root()) / file
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    entry = cached.get(key)
    known = float(entry[field]) if (isinstance(entry, dict) and isinstance(entry.get(field), (int, float))
                                    and entry[field] > 0) else None
    if known is not None and not keep_best:
        return known
    value = measure()
    if known is not None and known >= value:
        return known
    cached[key] = {field: round(value, 4), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cached)
    return value


def measure_bf16_time_ratio(rows: int = 512, hidden: int = 576, inner: int = 1536, rounds: int = 5,
                            steps: int = 3) -> float:
    """Median over ``rounds`` of (bf16 time / float32 time) for ``steps`` forward+backward passes of
    an MLP block (``rows`` tokens, ``hidden`` → ``inner`` → ``hidden``, SmolLM2-135M's widths)."""
    passes = {dtype: _mlp_pass(dtype, rows, hidden, inner) for dtype in (torch.float32, torch.bfloat16)}
    for run in passes.values():  # warm-up: kernels chosen, memory allocated
        run()
        run()
    ratios = []
    for _ in range(rounds):
        seconds = {}
        for dtype, run in passes.items():
            started = time.perf_counter()
            for _ in range(steps):
                run()
            seconds[dtype] = time.perf_counter() - started
        ratios.append(seconds[torch.bfloat16] / seconds[torch.float32])
    return statistics.median(ratios)


def _mlp_pass(dtype: torch.dtype, rows: int, hidden: int, inner: int) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)
    up = (torch.randn(inner, hidden, generator=generator) * 0.02).to(dtype)
    down = (torch.randn(hidden, inner, generator=generator) * 0.02).to(dtype)
    x = torch.randn(rows, hidden, generator=generator).to(dtype).requires_grad_(True)

    def run() -> None:
        out = torch.nn.functional.silu(x @ up.t()) @ down.t()
        out.float().square().mean().backward()
        x.grad = None

    return run
