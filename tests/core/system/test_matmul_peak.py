"""The matmul peak: measured for real on this machine, once per processor, torch, threads and dtype."""

from __future__ import annotations

import json

import torch

from kbit.core.system.matmul_peak import CACHE_FILE, matmul_peak_gflops, measure_matmul_gflops, peak_key


def test_a_real_matmul_is_timed():
    assert 0.1 < measure_matmul_gflops("cpu", torch.float32, size=256, rounds=3) < 1e6


def test_measured_once_per_dtype_then_read_from_the_cache(tmp_path, monkeypatch):
    import kbit.core.system.matmul_peak as peak

    calls = []
    monkeypatch.setattr(peak, "measure_matmul_gflops", lambda device, dtype: calls.append(dtype) or 123.0)
    assert matmul_peak_gflops("cpu", torch.float32, tmp_path) == 123.0
    assert matmul_peak_gflops("cpu", torch.float32, tmp_path) == 123.0 and calls == [torch.float32]
    matmul_peak_gflops("cpu", torch.bfloat16, tmp_path)
    assert calls == [torch.float32, torch.bfloat16]  # another dtype: its own measurement
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert set(cached) == {peak_key("cpu", torch.float32), peak_key("cpu", torch.bfloat16)}
    assert f"{torch.get_num_threads()} threads" in peak_key("cpu", torch.float32)
