"""Shared helpers for the benchmark programs: result lines, model and data setup, subprocess workers.

Every benchmark produces ``Figure``s: one measured quantity with kbit's value, the reference value,
their ratio, the target the ratio is held to and whether it was met. ``main`` of each item module
prints them and can write them to a file; ``benchmarks.run`` collects all items into one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULT_MARK = "@@KBIT-BENCH-RESULT@@ "


@dataclass
class Figure:
    """One benchmark figure. ``ratio`` is kbit/reference unless ``note`` says otherwise.

    ``target`` is a comparison such as ``"<= 1.02"`` applied to ``ratio``; ``passed`` is None when
    the figure is informational (no target) or could not be measured.
    """

    item: str
    name: str
    kbit: float | None
    reference: float | None
    ratio: float | None
    target: str = ""
    unit: str = ""
    note: str = ""
    passed: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if self.passed is None and self.target and self.ratio is not None:
            self.passed = check(self.ratio, self.target)

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else ("pass" if self.passed else "MISS")

    def row(self) -> str:
        return (f"| {self.item} | {self.name} | {fmt(self.kbit)} | {fmt(self.reference)} | {fmt(self.ratio)} | "
                f"{self.target or '-'} | {self.verdict} | {self.unit} | {self.note} |")

    def line(self) -> str:
        return (f"{self.item:<16} {self.name:<44} kbit={fmt(self.kbit):>10} ref={fmt(self.reference):>10} "
                f"ratio={fmt(self.ratio):>8} target={self.target or '-':<8} {self.verdict:<4} {self.unit}"
                + (f"  # {self.note}" if self.note else ""))


TABLE_HEADER = ("| item | figure | kbit | reference | ratio | target | result | unit | note |\n"
                "|---|---|---|---|---|---|---|---|---|")


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def check(ratio: float, target: str) -> bool:
    op, _, bound = target.partition(" ")
    limit = float(bound)
    return {"<=": ratio <= limit, ">=": ratio >= limit, "<": ratio < limit, ">": ratio > limit}[op]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# Reporting ---------------------------------------------------------------------------------------


def print_figures(figures: Sequence[Figure]) -> None:
    for figure in figures:
        print(figure.line(), flush=True)


def write_figures(path: str | Path, figures: Sequence[Figure], header: str = "") -> None:
    """Write ``figures`` as a markdown table (for BENCHMARKS.md) and a JSON twin next to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (header.rstrip() + "\n\n" if header else "") + TABLE_HEADER + "\n" + "\n".join(f.row() for f in figures) + "\n"
    path.write_text(text, encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps([asdict(f) for f in figures], indent=1), encoding="utf-8")


def machine_description() -> str:
    import importlib.metadata as md

    versions = []
    for package in ("torch", "transformers", "peft", "trl", "bitsandbytes", "llmcompressor", "compressed-tensors", "torchao"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            versions.append(f"{package} missing")
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs{gpu}, Python {platform.python_version()}, "
            + ", ".join(versions))


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every item accepts: --quick (tiny budgets), --out FILE, --device."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the program runs end to end")
    p.add_argument("--out", help="also write the figures as a markdown table (and .json) to this file")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default) or cuda; with cuda the training items measure GPU memory and tokens/s")
    p.add_argument("--workdir", help="keep intermediate runs here (default: a temporary folder)")
    p.add_argument("--model", help="model directory to measure instead of the embedded SmolLM2 default "
                                   "(sets KBIT_BENCH_MODEL, which the items' workers inherit)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch in this process and its workers (default: torch's choice). "
                        "On a machine shared with other jobs, 1 avoids OpenMP threads waiting on a busy core")
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply --threads (before torch is imported, so workers inherit it) and quiet the libraries."""
    if getattr(args, "model", None):
        os.environ[MODEL_VARIABLE] = str(Path(args.model).resolve())
    if getattr(args, "threads", 0):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(args.threads)
    quiet_logs()


def finish(figures: Sequence[Figure], args: argparse.Namespace, title: str) -> None:
    print_figures(figures)
    if args.out:
        write_figures(args.out, figures, header=f"{title}\n\nMachine: {machine_description()}")


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")


def workdir(args: argparse.Namespace, name: str) -> Path:
    import tempfile

    if args.workdir:
        path = Path(args.workdir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"kbit-bench-{name}-"))


# Model and data ----------------------------------------------------------------------------------


MODEL_VARIABLE = "KBIT_BENCH_MODEL"


def model_path() -> str:
    """``--model``'s directory, else the default model (SmolLM2-135M-Instruct), converted once to a
    cached fp32 safetensors dir."""
    from kbit.core.model.sources import resolve_model

    return resolve_model(os.environ.get(MODEL_VARIABLE)).path


def arith_data(seed: int = 0) -> Any:
    """kbit's embedded arithmetic set (2000 train, 100 held-out questions)."""
    from kbit.core.data import load_task_data

    return load_task_data("arith", seed=seed)


def tokenizer() -> Any:
    from kbit.core.model.sources import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(os.environ.get(MODEL_VARIABLE)))


def probe_batches(tok: Any, examples: Sequence[Any], batch_size: int = 16, device: str = "cpu") -> list[dict[str, Any]]:
    """Held-out prompt+completion texts, right-padded, as model inputs (kbit's merge-check format)."""
    from kbit.core.measure.generation import render_prompt

    texts = [render_prompt(tok, e) + e.completion for e in examples]
    side, tok.padding_side = tok.padding_side, "right"
    try:
        return [{k: v.to(device) for k, v in tok(texts[i : i + batch_size], return_tensors="pt", padding=True,
                                                  add_special_tokens=False).items()}
                for i in range(0, len(texts), batch_size)]
    finally:
        tok.padding_side = side


def no_cpu_repacking(model: Any) -> Any:
    """Keep bitsandbytes 4-bit weights as loaded on a CPU (what kbit's qlora ``prepare_model`` does).

    On CPUs with AVX512-BF16, bitsandbytes >= 0.49 repacks a ``Linear4bit`` permanently on its first
    no-grad forward (bf16 scales, double quantization dropped; dequantize and training break after
    it). A reference model built by hand must switch that off too, or it measures a different model.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


# Subprocess workers ------------------------------------------------------------------------------


def emit_result(payload: Any) -> None:
    """A worker's result: one marked JSON line on stdout, read back by ``run_worker``."""
    print(RESULT_MARK + json.dumps(payload), flush=True)


def run_worker(module: str, argv: Sequence[str], timeout: float = 1800, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m module *argv`` in a fresh process (separate memory) and return its result."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
            if isinstance(result, dict):
                result.setdefault("process_wall_s", wall)
            return result
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    raise RuntimeError(f"worker {module} {' '.join(argv)} failed (exit {proc.returncode}):\n{tail}")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def quiet_logs() -> None:
    """Keep benchmark output to the figures: silence library warnings and progress bars."""
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "peft", "trl", "kbit", "datasets", "llmcompressor", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
