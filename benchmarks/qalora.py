"""Item 8, a 4-bit model that keeps the fine-tune: qalora's Q4_1 GGUF against the usual ways to one.

On the default task (SmolLM2-135M-Instruct, arithmetic, seed 0) with equal steps and batch, three
paths end in a 4-bit model, each through kbit's own commands as a user runs them:

- qalora: ``kbit train --method qalora`` (Q4_1 base, QA-LoRA adapter, merge into the block offsets;
  the run writes the Q4_1 GGUF itself);
- the reference, qlora → merge → round-to-nearest Q4_1: ``kbit train`` (qlora) then ``kbit export
  --type q4_1`` of the merged model;
- qlora → merge → GPTQ: ``kbit quantize --method gptq`` of the same merged model.

Each 4-bit model is scored by ``kbit eval`` on the same held-out items (completion loss, exact
match); the figures are qalora's against the reference's (ratio = qalora / reference), with the
GPTQ path, the file sizes (against the float32 merged model) and the wall time of each path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import MODEL_VARIABLE, Figure, finish, parser, ratio, setup, workdir

ITEM = "8 qalora"


def kbit(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kbit", *args], cwd=cwd, capture_output=True, text=True, timeout=7200)
    if result.returncode != 0:
        raise RuntimeError(f"kbit {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result, time.perf_counter() - started


def train(method: str, steps: int, work: Path, extra: tuple[str, ...]) -> tuple[Path, float]:
    out = work / method
    record = out / "kbit.json"
    if record.is_file() and json.loads(record.read_text()).get("status") == "finished":
        return out, float(json.loads(record.read_text())["wall_time_s"])  # reused from an earlier run
    model = os.environ.get(MODEL_VARIABLE)  # --model DIR; the embedded default (as `kbit train` runs it) otherwise
    _, seconds = kbit("train", *(["--model", model] if model else []), "--method", method, "--max-steps", str(steps),
                      "--output", str(out), "--overwrite", *extra, cwd=work)
    return out, seconds


def evaluate(target: Path, limit: int, work: Path) -> dict[str, Any]:
    result, _ = kbit("eval", str(target), "--limit", str(limit), "--json", "--out", str(work / f"report-{target.stem}"),
                     "--overwrite", cwd=work)
    rows = json.loads(result.stdout)["rows"]
    return rows[-1]


def size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.glob("*.safetensors"))


def measure(args: Any) -> list[Figure]:
    steps, limit = (4, 8) if args.quick else (100, 100)
    extra = ("--eval-limit", str(limit), "--batch-size", "2" if args.quick else "8")
    work = workdir(args, "qalora")
    qalora, qalora_train_s = train("qalora", steps, work, extra)
    qalora_file = qalora / json.loads((qalora / "kbit.json").read_text())["exports"][0]["file"]
    qlora, qlora_train_s = train("qlora", steps, work, extra)
    export, export_s = kbit("export", str(qlora), "--format", "gguf", "--type", "q4_1", "--min-top1", "0",
                            "--limit", str(limit), "--json", "--overwrite", cwd=work)
    rtn_file = Path(json.loads(export.stdout)["output"])
    gptq_dir = work / "qlora-gptq"
    _, gptq_s = kbit("quantize", str(qlora), "--method", "gptq", "--output", str(gptq_dir), "--overwrite", cwd=work)

    rows = {"qalora": evaluate(qalora_file, limit, work), "rtn": evaluate(rtn_file, limit, work),
            "gptq": evaluate(gptq_dir, limit, work), "merged": evaluate(qlora / "merged", limit, work)}
    float32 = size(qlora / "merged")
    note = f"default task, {steps} steps each, {limit} held-out items; ratio = qalora / reference"
    figures = [
        Figure(ITEM, "held-out exact match: qalora Q4_1 vs qlora→merge→Q4_1 RTN", rows["qalora"]["exact_match"],
               rows["rtn"]["exact_match"], ratio(rows["qalora"]["exact_match"], rows["rtn"]["exact_match"]), ">= 1", "fraction", note),
        Figure(ITEM, "held-out loss: qalora Q4_1 vs qlora→merge→Q4_1 RTN", rows["qalora"]["loss"], rows["rtn"]["loss"],
               ratio(rows["qalora"]["loss"], rows["rtn"]["loss"]), "<= 1", "loss", note),
        Figure(ITEM, "held-out exact match: qalora Q4_1 vs qlora→merge→GPTQ", rows["qalora"]["exact_match"],
               rows["gptq"]["exact_match"], ratio(rows["qalora"]["exact_match"], rows["gptq"]["exact_match"]), "", "fraction",
               f"GPTQ: compressed-tensors W4A16 g64, its loss {rows['gptq']['loss']:.3f}"),
        Figure(ITEM, "held-out exact match: qalora Q4_1 vs its own fp32-merged qlora", rows["qalora"]["exact_match"],
               rows["merged"]["exact_match"], ratio(rows["qalora"]["exact_match"], rows["merged"]["exact_match"]), "",
               "fraction", f"the unquantized qlora merge: loss {rows['merged']['loss']:.3f}"),
        Figure(ITEM, "file size: qalora Q4_1 GGUF / float32 merged", size(qalora_file) / 2**20, float32 / 2**20,
               ratio(size(qalora_file), float32), "<= 0.35", "MiB", "head and embeddings in q8_0"),
        Figure(ITEM, "file size: RTN Q4_1 GGUF / GPTQ checkpoint", size(rtn_file) / 2**20, size(gptq_dir) / 2**20,
               ratio(size(rtn_file), size(gptq_dir)), "", "MiB", "same base, two 4-bit formats"),
        Figure(ITEM, "time: qalora train+export vs qlora train + export", qalora_train_s, qlora_train_s + export_s,
               ratio(qalora_train_s, qlora_train_s + export_s), "", "s",
               f"qlora→GPTQ adds {gptq_s:.0f} s of quantization to the qlora train"),
    ]
    return figures


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 8: qalora")
    return figures


if __name__ == "__main__":
    main()
