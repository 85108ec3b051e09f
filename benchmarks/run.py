"""Run the benchmark items and print one line per figure: name, kbit, reference, ratio, target, pass/miss.

    python -m benchmarks.run                      # all items 1-7 on this CPU (~20 minutes on a quiet machine)
    python -m benchmarks.run --quick              # tiny budgets: checks that every program runs end to end
    python -m benchmarks.run --items 2,3,4 --device cuda   # the GPU subset (see benchmarks/gpu.sh)

The figures are also written as a markdown table to --out (default benchmarks/results.md) and as JSON
next to it, to be copied into BENCHMARKS.md. Items share a work folder: item 4's trained run feeds
item 5, whose quantized models feed item 1, so nothing is trained or quantized twice.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (compute_dtype, framework_tax, merge_fidelity, ptq, qalora, quantized_speed, startup, storage,
                        vs_recipe)
from benchmarks._common import ROOT, Figure, machine_description, parser, print_figures, setup, write_figures

ITEMS = {
    "1": ("storage", storage),
    "2": ("framework tax", framework_tax),
    "3": ("quantized speed", quantized_speed),
    "4": ("merge fidelity", merge_fidelity),
    "5": ("post-training quantization", ptq),
    "6": ("start-up", startup),
    "7": ("compute dtype", compute_dtype),
    "8": ("qalora", qalora),
    "9": ("kbit vs recipe", vs_recipe),
}
# Start-up first (before this process imports torch); 4 before 5 before 1 (shared outputs).
ORDER = ("6", "2", "3", "7", "4", "5", "1", "8", "9")


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--items", default="1,2,3,4,5,6,7,8,9", help="comma-separated item numbers (default: all)")
    p.add_argument("--overhead", default="gptq", help="item 5: methods also run through oneshot directly")
    p.set_defaults(out=str(ROOT / "benchmarks" / "results.md"))
    args = p.parse_args(argv)
    setup(args)
    wanted = [i.strip() for i in args.items.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in ITEMS]
    if unknown:
        p.error(f"unknown item(s) {', '.join(unknown)}; choose from 1-9")
    if not args.workdir:
        args.workdir = tempfile.mkdtemp(prefix="kbit-bench-")
    print(f"work folder {args.workdir}; machine: {machine_description()}", flush=True)
    started = time.perf_counter()
    results: dict[str, list[Figure]] = {}
    seconds: dict[str, float] = {}
    for number in [n for n in ORDER if n in wanted]:
        title, module = ITEMS[number]
        print(f"\n== item {number}: {title}", flush=True)
        began = time.perf_counter()
        try:
            results[number] = module.measure(args)
        except Exception as exc:  # one failing item must not hide the others' figures
            traceback.print_exc()
            results[number] = [Figure(f"{number} {title}", "FAILED", None, None, None, note=f"{type(exc).__name__}: {exc}"[:300],
                                      passed=False)]
        seconds[number] = time.perf_counter() - began
        print_figures(results[number])
        print(f"   item {number} took {seconds[number]:.0f}s", flush=True)
    figures = [f for number in sorted(results) for f in results[number]]
    total = time.perf_counter() - started
    print(f"\n== all figures ({total / 60:.1f} min)")
    print_figures(figures)
    timing = ", ".join(f"item {n}: {seconds[n]:.0f}s" for n in sorted(seconds))
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Command: `{command.strip()}`\n\nMachine: {machine_description()}\n\n"
              f"Wall time: {total / 60:.1f} min ({timing}){' — QUICK smoke run, not a measurement' if args.quick else ''}")
    write_figures(args.out, figures, header=header)
    print(f"\nwritten to {args.out} (and {Path(args.out).with_suffix('.json')})")
    return figures


if __name__ == "__main__":
    main()
