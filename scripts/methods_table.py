#!/usr/bin/env python
"""Train every installed method briefly and print a markdown table of what each one gives.

For each method: ``kbit train --method M`` with a small step budget (default model SmolLM2-135M,
default dataset arith), then ``kbit eval`` on the variant that method ships — the quantized model for
post-training methods, else the quantized base with its adapter — for held-out loss, exact match,
bits per linear weight and in-memory size. Without ``kbit eval`` it falls back to the run's own
kbit.json (exact match after training, last training loss). Runs go under --root and are reused
when already finished (delete them to retrain).

    python scripts/methods_table.py --steps 20 --limit 50
    python scripts/methods_table.py --methods lora,qlora --model path/to/tiny --steps 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def kbit(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kbit", *args], capture_output=True, text=True, timeout=timeout)


def installed_methods() -> list[dict]:
    result = kbit("methods", "--json", timeout=300)
    result.check_returncode()
    return [m for m in json.loads(result.stdout) if m["status"] == "ready"]


def method_option_names(method: str) -> list[str]:
    from kbit.core.registry import get_method  # no torch import: option schemas are plain data

    return get_method(method).info.options.names


def train(method: str, run: Path, args: argparse.Namespace) -> dict:
    record_path = run / "kbit.json"
    if record_path.is_file() and json.loads(record_path.read_text()).get("status") == "finished":
        return json.loads(record_path.read_text())
    command = ["train", "--method", method, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--eval-limit", str(0 if args.has_eval else args.limit), "--output", str(run), "--overwrite"]
    if args.model:
        command += ["--model", args.model]
    if args.dataset:
        command += ["--dataset", args.dataset]
    accepted = set(method_option_names(method))
    for option in args.option:  # each method gets the options it has (e.g. calibration_samples only for PTQ)
        if option.partition("=")[0].strip() in accepted:
            command += ["-o", option]
    started = time.time()
    result = kbit(*command, timeout=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}")
    record = json.loads(record_path.read_text())
    record["_wall_s"] = round(time.time() - started, 1)
    return record


def shipped_variant(record: dict) -> str:
    return "quantized" if "quantized" in record.get("artifacts", {}) else "adapter"


def evaluate(run: Path, variant: str, args: argparse.Namespace) -> dict:
    out = run.parent / f"{run.name}-eval"
    result = kbit("eval", str(run), "--variant", variant, "--limit", str(args.limit), "--out", str(out), "--json",
                  timeout=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}")
    report = json.loads((out / "report.json").read_text())
    return next(r for r in report["rows"] if r["variant"] == variant)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def row_for(method: str, run: Path, args: argparse.Namespace) -> dict:
    record = train(method, run, args)
    variant = shipped_variant(record)
    row = {"method": method, "variant": variant, "train_s": record.get("wall_time_s"),
           "quantize_s": record.get("quantize", {}).get("seconds")}
    if args.has_eval:
        evaluated = evaluate(run, variant, args)
        row.update(loss=evaluated["loss"], exact_match=evaluated.get("exact_match"),
                   bits=evaluated.get("bits_per_weight"), size=evaluated.get("memory_bytes"))
    else:
        history = record.get("loss_history") or [{}]
        row.update(loss=history[-1].get("loss"), exact_match=record.get("metrics", {}).get("exact_match_after"),
                   bits=record.get("spec", {}).get("weights_bits"), size=None)
    if variant == "quantized":
        row["disk"] = dir_bytes(run / "quantized")
    elif (run / "merged").is_dir():
        row["disk"] = dir_bytes(run / "merged")
    return row


def fmt(value, kind: str = "") -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "mib":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", help="comma-separated methods (default: every ready method)")
    parser.add_argument("--model", help="model reference (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--dataset", help="dataset (default: arith)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=50, help="held-out items to score")
    parser.add_argument("--option", "-o", action="append", default=[],
                        help="key=value method option, passed to every method that has that option")
    parser.add_argument("--root", default="runs/methods-table")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per kbit command")
    args = parser.parse_args()
    args.has_eval = kbit("eval", "--help", timeout=300).returncode == 0
    methods = args.methods.split(",") if args.methods else [m["name"] for m in installed_methods()]
    source = "kbit eval" if args.has_eval else "kbit.json (no kbit eval installed)"
    print(f"{args.steps} steps per method; held-out metrics from {source}\n")
    print("| method | variant | held-out loss | exact match | bits/param | size (memory) | size (disk) | train s | quantize s |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    failures = []
    for method in methods:  # rows are printed as they finish: a long run shows progress
        print(f"[methods_table] {method} ...", file=sys.stderr, flush=True)
        try:
            r = row_for(method, Path(args.root) / method, args)
        except Exception as exc:  # one failing method must not hide the others
            failures.append((method, f"{type(exc).__name__}: {exc}"))
            continue
        print(f"| {r['method']} | {r['variant']} | {fmt(r['loss'])} | {fmt(r['exact_match'], 'pct')} | {fmt(r['bits'])} | "
              f"{fmt(r['size'], 'mib')} | {fmt(r.get('disk'), 'mib')} | {fmt(r['train_s'])} | {fmt(r['quantize_s'])} |",
              flush=True)
    for method, error in failures:
        print(f"\n- {method}: failed: {error}")


if __name__ == "__main__":
    main()
