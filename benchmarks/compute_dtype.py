"""Item 7, compute dtype: qlora training steps with float32 against bfloat16 compute on this machine.

kbit's ``compute_dtype=auto`` is bfloat16 on a GPU that supports it and on a CPU with native bf16
(avx512_bf16 / amx_bf16) where its bf16 probe (``kbit.core.system.cpu_probe``) ran faster than float32,
float32 on other CPUs. This measures the step time of both on the machine
it runs on (fresh subprocess each, alternating), so the choice is backed by a number: ratio = bf16
time / fp32 time; the target is <= 1 where auto picks bf16 here and >= 1 where it picks float32.
The loss after the last step is shown too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Figure, check_device, finish, median, parser, ratio, setup, workdir
from benchmarks.framework_tax import train_runs

ITEM = "7 compute dtype"


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    steps, batch, pairs = (3, 2, 1) if args.quick else (6, 4, 2)
    print(f"item 7: qlora fp32 vs bf16 compute, {steps} steps, batch {batch}, {pairs} alternating pairs", flush=True)
    order = [pair for _ in range(pairs) for pair in (("fp32", "kbit", ("qlora", "compute_dtype=float32")),
                                                   ("bf16", "kbit", ("qlora", "compute_dtype=bfloat16")))]
    runs = train_runs(order, steps, batch, args.device, workdir(args, "compute_dtype"))
    fp32, bf16 = runs["fp32"], runs["bf16"]
    step_32, step_16 = median([r["mean_step_s"] for r in fp32]), median([r["mean_step_s"] for r in bf16])
    peak_32, peak_16 = median([r["peak_train_bytes"] for r in fp32]), median([r["peak_train_bytes"] for r in bf16])
    from kbit.core.system.device import detect_device, host_cpu, resolve_compute_dtype

    auto = resolve_compute_dtype("auto", host_cpu() if args.device == "cpu" else detect_device())
    verdict = ">= 1.0" if auto == "float32" else "<= 1.0"
    return [
        Figure(ITEM, "step time bf16 / fp32", step_16, step_32, ratio(step_16, step_32), verdict, "s",
               f"kbit=bf16, ref=fp32; auto={auto} on {args.device} is justified when the target holds; "
               f"median of {pairs} runs, {steps} steps x batch {batch}"),
        Figure(ITEM, "peak memory bf16 / fp32", peak_16 / 2**20, peak_32 / 2**20, ratio(peak_16, peak_32), "", "MiB",
               "informational"),
        Figure(ITEM, "last-step loss bf16 vs fp32", bf16[0]["losses"][-1], fp32[0]["losses"][-1],
               ratio(bf16[0]["losses"][-1], fp32[0]["losses"][-1]), "", "loss", "informational"),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 7: compute dtype")
    return figures


if __name__ == "__main__":
    main()
