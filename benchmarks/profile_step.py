"""Where a training step's time goes: torch.profiler over kbit's own trainer (not a benchmark item).

    python -m benchmarks.profile_step qlora float32        # or: lora float32, qlora bfloat16, ...
    python -m benchmarks.profile_step qlora --rows 30      # also the 30 ops with the most self time

Builds the run as ``kbit train`` would (defaults, 400 arith rows, batch 8, r=16; ``-o KEY=VALUE`` adds
method options), runs two warm-up steps, then profiles ``--steps`` whole steps (forward, backward,
optimizer) on torch's default threads and prints each category's milliseconds per step and share:
matmul (mm/addmm/bmm and attention kernels), dequantize (bitsandbytes and kbit's own quantized
layers), optimizer (the optimizer's step and zeroing), elementwise (every other aten op), data (taking
the next micro-batch, timed outside the profiler) and Python (the rest of the step's wall time:
the framework's own code between ops). It also prints the step's matmul GFLOP/s and MFU as the run
records them (``kbit.core.measure.throughput``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product", "aten::_flash_attention",
          "aten::_efficient_attention")
DEQUANTIZE = ("bitsandbytes", "dequantize", "gemm_4bit", "gemv_4bit", "kbit::")
OPTIMIZER = ("Optimizer.step", "Optimizer.zero_grad", "aten::_foreach", "aten::_fused_adam")


def category(name: str) -> str | None:
    """The category of a profiled op (None: a wrapper whose time its children own, e.g. aten::linear)."""
    if name.startswith(OPTIMIZER):
        return "optimizer"
    if any(part in name for part in DEQUANTIZE):
        return "dequantize"
    if name.startswith(MATMUL):
        return "matmul"
    if name.startswith("aten::"):
        return "elementwise"
    return None


def step_trainer(method: str, options: dict[str, str], batch: int) -> tuple[Any, Any, Any]:
    """``(plan, model, trainer)`` for ``method`` built as ``kbit train`` builds them (400 arith rows, r=16
    unless ``options`` say otherwise, no merge), the optimizer created, ready for ``trainer.training_step``."""
    import tempfile

    from kbit.core.model.adapters import attach_adapter
    from kbit.core.model.bases import load_base, prepare_for_training
    from kbit.core.train.config import TrainConfig
    from kbit.core.train.fit import build_trainer
    from kbit.core.train.plan import plan_run

    config = TrainConfig(method=method, options={"r": "16", "merge_after_train": "false", **options}, max_steps=10,
                         batch_size=batch, max_examples=400, eval_limit=0,
                         output=tempfile.mkdtemp(prefix="kbit-step-"), overwrite=True)
    plan = plan_run(config)
    model = load_base(plan.method, plan.spec, plan.source.path)
    model = attach_adapter(prepare_for_training(plan.method, plan.spec, plan.policy, model), plan.spec)
    trainer = build_trainer(plan, model)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, which is not run here
    return plan, model, trainer


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", nargs="?", default="qlora")
    p.add_argument("compute_dtype", nargs="?", default="auto")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=0, help="also print this many ops by self time")
    p.add_argument("-o", dest="options", action="append", default=[], help="a method option, KEY=VALUE")
    args = p.parse_args(argv)

    from kbit.core.measure.throughput import model_shape, step_flops
    from kbit.core.system.device import torch_dtype
    from kbit.core.system.matmul_peak import matmul_peak_gflops

    options = {"compute_dtype": args.compute_dtype, **dict(o.split("=", 1) for o in args.options)}
    plan, model, trainer = step_trainer(args.method, options, args.batch)
    loader = iter(trainer.get_train_dataloader())

    def next_batch():
        started = time.perf_counter()
        batch = trainer._prepare_inputs(next(loader))
        return dict(batch), time.perf_counter() - started

    def step(batch):
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step(next_batch()[0])
    batches = [next_batch() for _ in range(args.steps)]
    data_s = sum(seconds for _, seconds in batches) / args.steps
    trainer._work = [0, 0, 0]
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for batch, _ in batches:
            step(batch)
    wall = (time.perf_counter() - started) / args.steps
    spent: dict[str, float] = {"matmul": 0.0, "dequantize": 0.0, "optimizer": 0.0, "elementwise": 0.0}
    for event in profile.key_averages():
        kind = category(event.key)
        if kind is not None:
            spent[kind] += event.self_cpu_time_total / 1e6 / args.steps
    # The profiler's own bookkeeping makes the profiled wall time longer than an unprofiled step's.
    spent["Python"] = max(0.0, wall - sum(spent.values()))
    spent["data"] = data_s
    total = wall + data_s
    print(f"{args.method}, compute {plan.spec.training.compute_dtype}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads: {total:.3f} s per step (profiled, data included)")
    for kind, seconds in spent.items():
        print(f"  {kind:<12} {1000 * seconds:8.1f} ms  {100 * seconds / total:5.1f}%")
    work = trainer.step_work()
    flops = step_flops(model_shape(trainer.model), work) / args.steps
    peak = matmul_peak_gflops("cpu", torch_dtype(plan.spec.training.compute_dtype))
    print(f"  {work.tokens / args.steps:.0f} tokens per step; {flops / 1e9:.2f} GFLOP in matrix products: "
          f"{flops / wall / 1e9:.1f} GFLOP/s over the profiled step ({flops / 1e9 / spent['matmul']:.1f} inside the "
          f"matmul ops), MFU {flops / wall / 1e9 / peak:.2f} of {peak:.1f} GFLOP/s")
    if args.rows:
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
