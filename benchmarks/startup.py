"""Item 6, start-up: ``kbit --help`` and ``kbit methods`` against ``python -c "import torch"``.

Each command runs as a fresh subprocess; the figure is the median wall time of several runs (one
unmeasured warm-up run each first). Target: kbit's commands take <= 0.25x the time of importing
torch, which they must never do (checked with ``python -X importtime``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, Figure, finish, median, parser, ratio, setup

ITEM = "6 start-up"


def kbit_command() -> list[str]:
    script = shutil.which("kbit")
    return [script] if script else [sys.executable, "-m", "kbit"]


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def imports_torch(arguments: list[str]) -> bool:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kbit", *arguments], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in proc.stderr.splitlines())


def measure(args: argparse.Namespace) -> list[Figure]:
    repeats = 2 if args.quick else 5
    commands = {
        "kbit --help": kbit_command() + ["--help"],
        "kbit methods": kbit_command() + ["methods"],
        "import torch": [sys.executable, "-c", "import torch"],
    }
    print(f"item 6: start-up, median of {repeats} runs each (after one warm-up)", flush=True)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():
        wall(command)  # warm the file cache
    for _ in range(repeats):  # interleaved, so a busy moment hits every command alike
        for name, command in commands.items():
            times[name].append(wall(command))
    torch_s = median(times["import torch"])
    figures = []
    for name in ("kbit --help", "kbit methods"):
        value = median(times[name])
        torch_loaded = imports_torch(name.split()[1:])
        figures.append(Figure(ITEM, f"{name} vs import torch", value, torch_s, ratio(value, torch_s), "<= 0.25", "s",
                              f"median of {repeats}; imports torch: {'YES' if torch_loaded else 'no'}"))
    return figures


def main(argv: list[str] | None = None) -> list[Figure]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 6: start-up")
    return figures


if __name__ == "__main__":
    main()
