"""Item 3, quantized training at full speed: qlora (4-bit NF4 base) against lora (unquantized base).

Both run through ``kbit train`` (the worker of item 2) on the same base, data, batch, seed and
steps, each in a fresh subprocess, alternating qlora, lora, qlora, lora.

Figures: step-time ratio lora/qlora (target >= 0.95: the quantized base costs at most ~5% speed),
model memory (parameters, buffers and quantization state as stored, adapter included) and peak memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Figure, check_device, finish, median, parser, ratio, setup, workdir
from benchmarks.framework_tax import train_runs

ITEM = "3 quantized speed"


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    steps, batch, pairs = (3, 2, 1) if args.quick else (10, 8, 2)
    print(f"item 3: qlora vs lora through kbit train, {steps} steps, batch {batch}, {pairs} alternating pairs", flush=True)
    order = [pair for _ in range(pairs) for pair in (("qlora", "kbit", ("qlora",)), ("lora", "kbit", ("lora",)))]
    runs = train_runs(order, steps, batch, args.device, workdir(args, "quantized_speed"))
    q, f = runs["qlora"], runs["lora"]
    step_q, step_f = median([r["mean_step_s"] for r in q]), median([r["mean_step_s"] for r in f])
    foot_q, foot_f = median([r["footprint_bytes"] for r in q]), median([r["footprint_bytes"] for r in f])
    peak_q, peak_f = median([r["peak_train_bytes"] for r in q]), median([r["peak_train_bytes"] for r in f])
    tok_q, tok_f = median([r["tokens_per_s"] for r in q]), median([r["tokens_per_s"] for r in f])
    peak = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "ru_maxrss at train end"
    return [
        Figure(ITEM, "step time: lora / qlora", step_q, step_f, ratio(step_f, step_q), ">= 0.95", "s",
               f"kbit=qlora, ref=lora, ratio=lora/qlora; median of {pairs} runs, {steps} steps x batch {batch}, {args.device}"),
        Figure(ITEM, "tokens per second qlora / lora", tok_q, tok_f, ratio(tok_q, tok_f), "", "tok/s", "informational"),
        Figure(ITEM, "model memory qlora / lora", foot_q / 2**20, foot_f / 2**20, ratio(foot_q, foot_f), "", "MiB",
               "params+buffers+quant state incl. adapter; fp32 embeddings (tied head) are ~28M of 135M params"),
        Figure(ITEM, "peak memory qlora / lora", peak_q / 2**20, peak_f / 2**20, ratio(peak_q, peak_f), "", "MiB", peak),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 3: quantized training at full speed")
    return figures


if __name__ == "__main__":
    main()
