"""The matmul peak: measured for real on this machine, once per processor, torch, threads and dtype."""

from __future__ import annotations

import json

import torch

from kbit.core.system.matmul_peak import CACHE_FILE, matmul_peak_gflops, measure_matmul_gflops, peak_key


def test_a_real_matmul_is_timed():
    assert 0.1 < measure_matmul_gflops("cpu", torch.float32, sizes=(256,), rounds=2) < 1e6


def test_larger_sizes_are_skipped_once_a_product_is_long_enough_to_time(monkeypatch):
    made: list[int] = []
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *shape, **kwargs: made.append(shape[0]) or randn(*shape, **kwargs))
    measure_matmul_gflops("cpu", torch.float32, sizes=(256, 128), rounds=1, long_enough_s=0.0)
    assert made == [128, 128]  # the smaller size first, and any timed product is "long enough" at 0 s
    made.clear()
    measure_matmul_gflops("cpu", torch.float32, sizes=(64, 128), rounds=1, long_enough_s=1e9)
    assert made == [64, 64, 128, 128]


def test_the_best_measurement_is_kept_per_dtype(tmp_path, monkeypatch):
    import kbit.core.system.matmul_peak as peak

    readings = iter([120.0, 80.0, 150.0, 40.0])  # 80: measured while other work loaded the machine
    monkeypatch.setattr(peak, "measure_matmul_gflops", lambda device, dtype: next(readings))
    assert [matmul_peak_gflops("cpu", torch.float32, tmp_path) for _ in range(3)] == [120.0, 120.0, 150.0]
    assert matmul_peak_gflops("cpu", torch.bfloat16, tmp_path) == 40.0  # another dtype: its own peak
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert set(cached) == {peak_key("cpu", torch.float32), peak_key("cpu", torch.bfloat16)}
    assert f"{torch.get_num_threads()} threads" in peak_key("cpu", torch.float32)
