"""Where a training step's time goes: torch.profiler over kbit's own trainer (not a benchmark item).

    python -m benchmarks.profile_step qlora bfloat16      # or: lora float32, qlora float32, ...

Builds the run exactly as ``kbit train`` would (defaults, 400 arith rows, batch 4, r=16), runs two
warm-up steps, then profiles three forward+backward passes (no optimizer step) on one thread and
prints the ops by self CPU time. The dequantize calls show that bitsandbytes dequantizes each 4-bit
weight in the forward and again in the backward pass; ``aten::bernoulli_`` is LoRA dropout's masks.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    import argparse
    import tempfile

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", nargs="?", default="qlora")
    p.add_argument("compute_dtype", nargs="?", default="auto")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rows", type=int, default=22)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from kbit.core.model.adapters import attach_adapter
    from kbit.core.model.bases import load_base, prepare_for_training
    from kbit.core.train.config import TrainConfig
    from kbit.core.train.fit import build_trainer
    from kbit.core.train.plan import plan_run

    config = TrainConfig(method=args.method, options={"r": "16", "merge_after_train": "false",
                                                      "compute_dtype": args.compute_dtype},
                         max_steps=10, batch_size=args.batch, max_examples=400, eval_limit=0,
                         output=tempfile.mkdtemp(prefix="kbit-profile-"), overwrite=True)
    plan = plan_run(config)
    model = load_base(plan.method, plan.spec, plan.source.path)
    model = attach_adapter(prepare_for_training(plan.method, plan.spec, plan.policy, model), plan.spec)
    trainer = build_trainer(plan, model)
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, which is not run here
    batches = iter(trainer.get_train_dataloader())
    batches = [trainer._prepare_inputs(next(batches)) for _ in range(5)]
    for batch in batches[:2]:
        trainer.training_step(trainer.model, dict(batch))
    started = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for batch in batches[2:]:
            trainer.training_step(trainer.model, dict(batch))
    print(f"{args.method}, compute {plan.spec.training.compute_dtype}: "
          f"{(time.perf_counter() - started) / 3:.3f} s per forward+backward (profiled, one thread)")
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
