"""Item 9, kbit vs the recipe: the whole ``kbit train`` process against the usual hand-written QLoRA script.

Same model (the embedded SmolLM2-135M-Instruct), data (the first 400 questions of kbit's arithmetic
set), steps, batch, rank, learning rate, warm-up and seed. kbit runs its defaults
(``kbit train --max-examples 400 --max-steps 10 --batch-size 4 -o r=16 --lr 2e-4``) with no merge and
no held-out scoring; the recipe is what the peft/trl docs teach: ``BitsAndBytesConfig`` NF4 with
double quantization and bf16 compute, ``prepare_model_for_kbit_training`` with gradient
checkpointing, a peft ``LoraConfig``, trl's ``SFTTrainer`` with its defaults (bf16 mixed precision).
Each side is one fresh process, timed from start to exit by a small parent process that also reads
the child's peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``); the sides alternate
(kbit, recipe, kbit, recipe, ...), and the figures are medians. A third, informational side runs kbit
with glibc's malloc defaults (``KBIT_SYSTEM_MALLOC=1``, see ``kbit.core.system.allocator``), to show what
the command's malloc settings account for. Afterwards, untimed, both adapters are
scored on the same 100 held-out questions by the same scorer (kbit's generation and exact match on
the 4-bit base), so the speed does not come from learning less.

Targets (issue 16): wall ratio kbit/recipe <= 0.67, peak memory ratio <= 1.00, exact match no worse.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (MODEL_VARIABLE, Figure, check_device, emit_result, finish, median, model_path, no_cpu_repacking,
                                parser, ratio, run_worker, setup, workdir)
from kbit.core.system.allocator import OPT_OUT

ITEM = "9 kbit vs recipe"
SYSTEM_MALLOC = "kbit-system-malloc"  # kbit under glibc's malloc defaults
EXAMPLES, RANK, LR, SEED, MAX_LENGTH = 400, 16, 2e-4, 0, 256


def kbit_command(steps: int, batch: int, output: Path) -> list[str]:
    model = os.environ.get(MODEL_VARIABLE)  # --model DIR; the embedded default otherwise
    return [sys.executable, "-m", "kbit", "train", "--max-examples", str(EXAMPLES), "--max-steps", str(steps),
            "--batch-size", str(batch), "-o", f"r={RANK}", "--lr", str(LR), "-o", "merge_after_train=false",
            "--eval-limit", "0", "--seed", str(SEED), "--output", str(output), "--overwrite",
            *(["--model", model] if model else [])]


def recipe_command(steps: int, batch: int, output: Path, device: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.vs_recipe", "--worker", "recipe", "--steps", str(steps),
            "--batch", str(batch), "--output", str(output), "--device", device]


def recipe_worker(args: argparse.Namespace) -> None:
    """The hand-written QLoRA script, as the peft and trl docs write it."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from kbit.core.data import load_task_data

    path = model_path()
    data = load_task_data("arith", max_examples=EXAMPLES, seed=SEED)  # kbit's 400 training questions
    rows = [{"prompt": e.prompt_messages(), "completion": [{"role": "assistant", "content": e.completion}]}
            for e in data.train]
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=torch.bfloat16)
    # On a CPU with AVX512-BF16 bitsandbytes repacks 4-bit weights on a no-grad forward, which breaks
    # training; kbit's qlora switches that off, and so does this script (see benchmarks/_common.py).
    no_cpu_repacking(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    config = SFTConfig(output_dir=str(Path(args.output) / "checkpoints"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch, learning_rate=LR, warmup_steps=1, seed=SEED,
                       max_length=MAX_LENGTH, gradient_checkpointing=True, save_strategy="no", report_to=[],
                       logging_steps=1, use_cpu=args.device == "cpu")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(path))
    trainer.train()
    model.save_pretrained(Path(args.output) / "adapter")


def measure_child(command: list[str]) -> dict[str, Any]:
    """Run ``command`` to completion: its wall time and peak resident memory (this process has no other child)."""
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}):\n{tail}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    return {"wall_s": wall, "peak_rss_bytes": peak}


def score_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out exact match of the adapter in ``args.output`` on the NF4 base, kbit's generation and scorer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from kbit.core.data import load_task_data
    from kbit.core.measure.generation import generate_answers
    from kbit.core.measure.metrics import task_scores

    path = model_path()
    data = load_task_data("arith", max_examples=EXAMPLES, seed=SEED)
    held_out = data.held_out[: args.limit]
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=torch.float32)
    no_cpu_repacking(base)
    model = PeftModel.from_pretrained(base, args.output).eval()
    answers = generate_answers(model, AutoTokenizer.from_pretrained(path), held_out, max_new_tokens=8)
    _, means = task_scores(data.task, answers.texts, held_out)
    return {"exact_match": means["exact_match"], "items": len(held_out)}


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    steps, batch, runs, limit = (3, 4, 1, 20) if args.quick else (10, 4, 3, 100)
    base = workdir(args, "vs_recipe")
    print(f"item 9: kbit train vs the hand-written recipe, whole process, {steps} steps x batch {batch}, "
          f"{runs} alternating runs each", flush=True)
    results: dict[str, list[dict[str, Any]]] = {"kbit": [], "recipe": [], SYSTEM_MALLOC: []}
    for index in range(runs):
        for side in results:
            out = base / f"{index}-{side}"
            command = (recipe_command(steps, batch, out, args.device) if side == "recipe"
                       else kbit_command(steps, batch, out))
            env = {OPT_OUT: "1"} if side == SYSTEM_MALLOC else None
            result = run_worker("benchmarks.vs_recipe", ["--measure", "--", *command], timeout=3600, env=env)
            result["adapter"] = str(out / "adapter")
            results[side].append(result)
            print(f"  [{side}] wall {result['wall_s']:.1f}s, peak RSS {result['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    scores = {side: run_worker("benchmarks.vs_recipe", ["--worker", "score", "--output", results[side][0]["adapter"],
                                                        "--limit", str(limit)])
              for side in ("kbit", "recipe")}
    wall_k, wall_r = (median([r["wall_s"] for r in results[s]]) for s in ("kbit", "recipe"))
    peak_k, peak_r = (median([r["peak_rss_bytes"] for r in results[s]]) for s in ("kbit", "recipe"))
    peak_s = median([r["peak_rss_bytes"] for r in results[SYSTEM_MALLOC]])
    em_k, em_r = scores["kbit"]["exact_match"], scores["recipe"]["exact_match"]
    setting = f"median of {runs}, {steps} steps x batch {batch}, r={RANK}, lr {LR}, {EXAMPLES} arith rows, {args.device}"
    return [
        Figure(ITEM, "whole-process wall time", wall_k, wall_r, ratio(wall_k, wall_r), "<= 0.67", "s", setting),
        Figure(ITEM, "peak RSS of the process", peak_k / 2**20, peak_r / 2**20, ratio(peak_k, peak_r), "<= 1.00", "MiB",
               "getrusage(RUSAGE_CHILDREN).ru_maxrss of each run"),
        Figure(ITEM, "peak RSS, kbit with glibc's malloc defaults", peak_s / 2**20, peak_r / 2**20, ratio(peak_s, peak_r),
               "", "MiB", f"{OPT_OUT}=1 (informational: what kbit.core.system.allocator's settings save)"),
        Figure(ITEM, "held-out exact match after training", em_k, em_r, ratio(em_k, em_r) if em_r else None, "",
               "EM", f"{scores['kbit']['items']} held-out questions, same scorer; no worse: {em_k >= em_r}",
               passed=em_k >= em_r),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", choices=("recipe", "score"), help=argparse.SUPPRESS)
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("command", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup(args)
    if args.measure:
        emit_result(measure_child(args.command))
        return []
    if args.worker == "recipe":
        recipe_worker(args)
        return []
    if args.worker == "score":
        emit_result(score_worker(args))
        return []
    figures = measure(args)
    finish(figures, args, "Item 9: kbit train vs the hand-written recipe")
    return figures


if __name__ == "__main__":
    main()
