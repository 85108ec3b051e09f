"""What the quantized-base cache saves: the first load of a method's base against later loads, side by side.

    python benchmarks/quantized_base_cache.py METHOD [key=value ...] [--loads 3]

Each load is ``kbit.core.model.bases.load_base`` of the default base (SmolLM2) in a fresh process, as training, the
merge and ``kbit eval`` load it, with a cache folder of its own (``KBIT_CACHE``, the converted model linked in)
that is empty before the first. Printed per load: the whole ``load_base``, reading the weights, the method's
``quantize_base`` and what the cache adds; then the ratio of a later load's cache work to the first
quantization. Timers wrap kbit's functions in the measuring process only; nothing is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_load(method_name: str, options: list[str]) -> dict[str, float]:
    import kbit.core.model.bases as bases
    from kbit.core.system.device import DeviceInfo
    from kbit.core.methods.method import Method
    from kbit.core.model.sources import resolve_model
    from kbit.core.methods.registry import default_registry

    source = resolve_model(None)
    method = default_registry().get(method_name)
    spec = method.resolve_spec(dict(option.split("=", 1) for option in options), DeviceInfo.cpu())
    spent = {"load": 0.0, "quantize": 0.0, "release": 0.0}

    def timed(kind: str, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[kind] += time.perf_counter() - start
        return wrapper

    bases.load_causal_lm = timed("load", bases.load_causal_lm)
    Method.quantize_base = timed("quantize", Method.quantize_base)
    bases.release_load_memory = timed("release", bases.release_load_memory)
    start = time.perf_counter()
    bases.load_base(method, spec, source.path)
    total = time.perf_counter() - start
    return {"total": total, **spent, "cache": total - sum(spent.values())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("options", nargs="*")
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_load(args.method, args.options)))
        return
    from kbit.core.system.cache import cache_root

    loads = []
    with tempfile.TemporaryDirectory() as cache:
        (Path(cache) / "models").symlink_to(cache_root() / "models")
        for _ in range(args.loads):
            result = subprocess.run([sys.executable, __file__, args.method, *args.options, "--one"], capture_output=True,
                                    text=True, env={**os.environ, "KBIT_CACHE": cache}, check=True)
            loads.append(json.loads(result.stdout.strip().splitlines()[-1]))
            figures = loads[-1]
            print(f"load {len(loads)}: load_base {figures['total']:.2f} s = weights {figures['load']:.2f} s + quantize_base "
                  f"{figures['quantize']:.2f} s + memory release {figures['release']:.2f} s + cache {figures['cache']:.2f} s",
                  flush=True)
    first = loads[0]["quantize"]
    for index, later in enumerate(loads[1:], start=2):
        print(f"load {index}: the cache's work is {later['cache'] / first:.1%} of the first quantization "
              f"({later['cache']:.2f} s against {first:.2f} s); quantize_base ran {'again' if later['quantize'] else 'not at all'}")


if __name__ == "__main__":
    main()
