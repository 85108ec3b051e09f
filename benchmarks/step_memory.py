"""What one training step's forward pass adds to the process, against what autograd keeps alive, under
glibc's malloc defaults and under the ``kbit`` command's settings (``kbit.core.system.allocator``).

    python -m benchmarks.step_memory

Each setting runs in its own fresh process: the embedded SmolLM2-135M loaded as kbit's qlora loads
it (NF4 + double quantization, float32 compute), r=16 LoRA on every linear layer with kbit's fused
dropout, kbit's labelled-positions loss on one padding-free micro-batch of 4 arithmetic examples (as
``kbit train``'s default batches). It runs 6 steps (forward, backward; no optimizer) and reports the
largest growth of the process's anonymous memory (``RssAnon``) over a forward pass, the bytes of the
tensors autograd saved for the backward pass (distinct storages the forward allocated, counted
with ``saved_tensors_hooks``) and the median step time. ``mmap`` (every allocation over 256 KiB its own
mapping) is the third setting: the growth there is the live figure, at the price of page faults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (Figure, arith_data, emit_result, finish, model_path, no_cpu_repacking, parser, ratio,
                                run_worker, setup, tokenizer)
from kbit.core.system.allocator import TUNABLES

ITEM = "step memory"
SETTINGS = {
    "glibc defaults": {},
    "kbit's settings": {"GLIBC_TUNABLES": ":".join(TUNABLES)},
    "mmap over 256 KiB": {"MALLOC_MMAP_THRESHOLD_": str(256 << 10)},
}


def anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def padding_free_batch(count: int) -> dict[str, Any]:
    """``count`` training examples as one row: position ids restart per example, only completions labelled."""
    import torch

    from kbit.core.measure.generation import render_prompt

    tok = tokenizer()
    ids, positions, labels = [], [], []
    for example in arith_data().train[:count]:
        prompt = tok(render_prompt(tok, example), add_special_tokens=False)["input_ids"]
        answer = tok(example.completion + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids += prompt + answer
        positions += list(range(len(prompt) + len(answer)))
        labels += [-100] * len(prompt) + answer
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([positions]), "labels": torch.tensor([labels])}


def step_worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig

    from kbit.core.model.lora_dropout import fuse_lora_dropout
    from kbit.core.model.sources import load_causal_lm
    from kbit.core.train.loss import labelled_loss

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
    model = no_cpu_repacking(load_causal_lm(model_path(), quant_config=quant, dtype="float32"))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    fuse_lora_dropout(model)
    model.train()
    batch = padding_free_batch(4)
    saved: dict[int, int] = {}
    # weights are saved too (as transposed views): only storages the forward pass allocated count
    weights = {tensor.untyped_storage().data_ptr() for tensor in [*model.parameters(), *model.buffers()]}

    def count(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    growth, kept, times = [], [], []
    for _ in range(args.steps):
        saved.clear()
        started, before = time.perf_counter(), anon_mib()
        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            loss = labelled_loss(model, batch).loss
        growth.append(anon_mib() - before)
        kept.append(sum(saved.values()) / 2**20)
        loss.backward()
        model.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - started)
    return {"growth_mib": max(growth), "saved_mib": max(kept),
            "step_s": statistics.median(times[1:]), "tokens": int(batch["input_ids"].numel())}


def measure(args: argparse.Namespace) -> list[Figure]:
    steps = 3 if args.quick else 6
    results = {}
    for name, env in SETTINGS.items():
        results[name] = run_worker("benchmarks.step_memory", ["--worker", "--steps", str(steps)], timeout=1800,
                                   env={"GLIBC_TUNABLES": "", **env})
        r = results[name]
        print(f"  [{name}] forward adds {r['growth_mib']:.0f} MiB (saved tensors {r['saved_mib']:.0f} MiB), "
              f"step {r['step_s']:.2f} s, {r['tokens']} tokens", flush=True)
    default, ours, mapped = (results[name] for name in SETTINGS)
    setting = f"SmolLM2-135M qlora r=16, one padding-free batch of 4 ({ours['tokens']} tokens), median of {steps - 1} steps"
    return [
        Figure(ITEM, "forward growth, kbit's settings / glibc's", ours["growth_mib"], default["growth_mib"],
               ratio(ours["growth_mib"], default["growth_mib"]), "<= 0.75", "MiB", setting),
        Figure(ITEM, "forward growth / saved tensors, glibc's defaults", default["growth_mib"], default["saved_mib"],
               ratio(default["growth_mib"], default["saved_mib"]), "", "MiB", "1.0 would be no heap overhead"),
        Figure(ITEM, "forward growth / saved tensors, kbit's settings", ours["growth_mib"], ours["saved_mib"],
               ratio(ours["growth_mib"], ours["saved_mib"]), "", "MiB", "1.0 would be no heap overhead"),
        Figure(ITEM, "step time, kbit's settings / glibc's", ours["step_s"], default["step_s"],
               ratio(ours["step_s"], default["step_s"]), "<= 1.10", "s", setting),
        Figure(ITEM, "step time, mmap over 256 KiB / glibc's", mapped["step_s"], default["step_s"],
               ratio(mapped["step_s"], default["step_s"]), "", "s",
               f"forward growth {mapped['growth_mib']:.0f} MiB: why kbit does not take this route"),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup(args)
    if args.worker:
        emit_result(step_worker(args))
        return []
    if not sys.platform.startswith("linux"):
        raise SystemExit("benchmarks.step_memory reads /proc/self/status and glibc settings: Linux only")
    figures = measure(args)
    finish(figures, args, "Step memory: glibc's malloc defaults against the kbit command's settings")
    return figures


if __name__ == "__main__":
    main()
