"""bf16 against float32 on this CPU: measured for real, once per CPU and torch, then read from the cache."""

from __future__ import annotations

import json

from kbit.core.system.cpu_probe import CACHE_FILE, bf16_time_ratio, measure_bf16_time_ratio, probe_key

ZEN4 = "processor\t: 0\nmodel name\t: AMD EPYC 9454\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def test_the_probe_measures_a_real_ratio():
    ratio = measure_bf16_time_ratio(rows=64, hidden=64, inner=128, rounds=3, steps=1)
    assert 0.01 < ratio < 100


def test_a_cpu_is_measured_once_and_then_read_from_the_cache(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return 1.45

    assert bf16_time_ratio(XEON, tmp_path, measure) == 1.45
    assert bf16_time_ratio(XEON, tmp_path, measure) == 1.45 and len(calls) == 1
    assert bf16_time_ratio(ZEN4, tmp_path, lambda: 0.82) == 0.82  # another CPU: its own entry
    cached = json.loads((tmp_path / CACHE_FILE).read_text())
    assert {entry["ratio"] for entry in cached.values()} == {1.45, 0.82}
    assert probe_key(XEON) in cached and "Intel(R) Xeon(R) Processor" in probe_key(XEON)


def test_a_damaged_or_unwritable_cache_is_measured_around(tmp_path):
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert bf16_time_ratio(XEON, tmp_path, lambda: 0.9) == 0.9
    assert json.loads((tmp_path / CACHE_FILE).read_text())[probe_key(XEON)]["ratio"] == 0.9
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert bf16_time_ratio(XEON, blocked / "below", lambda: 1.2) == 1.2  # cannot create the folder: still answers
