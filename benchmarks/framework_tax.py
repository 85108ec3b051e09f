"""Item 2, no framework tax: ``kbit train`` against a plain hand-written peft + trl QLoRA script.

Both train the default model (SmolLM2-135M-Instruct) on kbit's arithmetic set with the same seed,
hyperparameters and number of steps, each in a fresh subprocess (so peak memory is its own),
alternating kbit, reference, kbit, reference. Measured per run: time of every optimizer step (the
first, which includes warm-up, is left out of the mean), peak memory when training ends (ru_maxrss
on a CPU, torch.cuda.max_memory_allocated on a GPU), tokens per second and the loss of every step.

Targets: step time ratio kbit/reference <= 1.02, peak memory ratio <= 1.00, losses equal within 1e-4.

trl casts the adapter of a bitsandbytes base to bf16; kbit keeps it in float32 (see
``kbit.core.train.trainer``) and the reference does the same, so the ratio
measures the framework only. A third run per pair, the reference left with trl's bf16 adapter
(``--worker reference-trl``), shows what that choice costs or saves: informational, no target.

The same worker (``--worker kbit``) also serves items 3 (qlora vs lora) and 7 (fp32 vs bf16).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (Figure, check_device, emit_result, finish, median, model_path, no_cpu_repacking,
                                parser, ratio, run_worker, setup, workdir)

ITEM = "2 framework tax"
# kbit's defaults (TrainConfig, qlora options) spelled out for the hand-written reference.
LR, WARMUP_RATIO, MAX_LENGTH, SEED = 2e-3, 0.05, 256, 0
# The same computation on both sides: no LoRA dropout (kbit draws its masks its own way,
# ``kbit.core.model.lora_dropout``) and no float copy of the 4-bit base (qlora's float_copy).
LORA = dict(r=64, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
KBIT = ("qlora", "lora_dropout=0", "float_copy=off")


class Probe:
    """Per-step wall time, loss and token count, model footprint and peak memory of one training run."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self.tokens: list[int] = []
        self.footprint = 0
        self.peak_train = 0
        self._began = 0.0

    def attach(self, trainer: Any) -> Any:
        from transformers import TrainerCallback

        probe = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                from kbit.core.measure.metrics import memory_footprint

                probe.footprint = memory_footprint(model)
                if probe.device == "cuda":
                    import torch

                    torch.cuda.reset_peak_memory_stats()

            def on_step_begin(self, args, state, control, **kwargs):
                probe._synchronize()
                probe._began = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                probe._synchronize()
                probe.step_times.append(time.perf_counter() - probe._began)

            def on_train_end(self, args, state, control, **kwargs):
                probe.peak_train = probe.peak_memory()

        trainer.add_callback(Callback())
        step = trainer.training_step

        def training_step(model, inputs, *rest, **kwargs):
            loss = step(model, inputs, *rest, **kwargs)
            self.losses.append(float(loss))
            mask = inputs.get("attention_mask")
            self.tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return loss

        trainer.training_step = training_step
        return trainer

    def _synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def peak_memory(self) -> int:
        if self.device == "cuda":
            import torch

            return int(torch.cuda.max_memory_allocated())
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def result(self, **extra: Any) -> dict[str, Any]:
        later = self.step_times[1:] or self.step_times
        return {
            "step_times": self.step_times, "losses": self.losses, "tokens": self.tokens,
            "mean_step_s": sum(later) / len(later),
            "tokens_per_s": sum(self.tokens[1:] or self.tokens) / sum(later),
            "footprint_bytes": self.footprint, "peak_train_bytes": self.peak_train,
            "peak_exit_bytes": self.peak_memory(), **extra,
        }


def kbit_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Train through kbit's own pipeline (``run_training``), instrumented with the same probe."""
    from kbit.core.train import fit, pipeline
    from kbit.core.train.config import TrainConfig

    probe = Probe(args.device)
    original = fit.build_trainer
    fit.build_trainer = lambda plan, model: probe.attach(original(plan, model))
    options = {"merge_after_train": "false", **dict(o.split("=", 1) for o in args.option)}
    config = TrainConfig(model=model_path(), method=args.method, options=options, max_steps=args.steps, batch_size=args.batch, lr=LR,
                         logging_steps=1, save_steps=args.steps + 1000, eval_limit=0, seed=SEED,
                         output=str(Path(args.output) / "run"), overwrite=True)
    started = time.perf_counter()
    pipeline.run_training(config)
    return probe.result(total_s=time.perf_counter() - started)


def reference_worker(args: argparse.Namespace) -> dict[str, Any]:
    """A plain peft + trl QLoRA script with kbit's default settings, written as a user would."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    from kbit.core.data.arithmetic import generate
    from kbit.core.system.device import detect_device, host_cpu, resolve_compute_dtype

    started = time.perf_counter()
    cuda = args.device == "cuda"
    # kbit's compute_dtype=auto on this machine: bf16 on a GPU that has it and on a CPU with native bf16.
    compute = getattr(torch, resolve_compute_dtype("auto", detect_device() if cuda else host_cpu()))
    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = generate(seed=SEED)  # kbit's arithmetic set, the same 2000 training questions
    rows = [{"prompt": e.prompt_messages(), "completion": [{"role": "assistant", "content": e.completion}]} for e in data.train]
    set_seed(SEED)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=compute, use_safetensors=True)
    # On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights on the first no-grad forward
    # (bf16 scales, no double quant; training breaks after it): switch it off, as kbit's qlora does.
    no_cpu_repacking(model)
    # No gradient checkpointing: kbit's auto leaves it off where a step fits in half the free memory,
    # as this 135M model's does on any machine these benchmarks run on (kbit.json records the decision).
    checkpointing = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    config = SFTConfig(
        output_dir=str(Path(args.output) / "reference"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=LR, lr_scheduler_type="linear", warmup_steps=int(-(-WARMUP_RATIO * args.steps // 1)),
        logging_steps=1, save_strategy="no", seed=SEED, data_seed=SEED, max_length=MAX_LENGTH, report_to=[],
        bf16=compute == torch.bfloat16, fp16=compute == torch.float16, use_cpu=not cuda,
        gradient_checkpointing=checkpointing, dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    # trl casts a bitsandbytes base's adapter to bf16; kbit keeps PEFT's float32 (resume reloads it
    # in float32): do the same, so both sides run the same arithmetic. "reference-trl" keeps trl's.
    if args.worker == "reference":
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    probe = Probe(args.device)
    probe.attach(trainer)
    trainer.train()
    model.save_pretrained(Path(args.output) / "reference" / "adapter")
    return probe.result(total_s=time.perf_counter() - started)


def worker_argv(kind: str, steps: int, batch: int, device: str, output: Path, method: str = "qlora",
                options: tuple[str, ...] = ()) -> list[str]:
    argv = ["--worker", kind, "--steps", str(steps), "--batch", str(batch), "--device", device,
            "--output", str(output), "--method", method]
    for option in options:
        argv += ["-o", option]
    return argv


def train_runs(order: list[tuple[str, str, tuple[str, ...]]], steps: int, batch: int, device: str,
               base: Path) -> dict[str, list[dict[str, Any]]]:
    """Run workers in the given order of (label, kind, (method, *options)); results grouped by label."""
    results: dict[str, list[dict[str, Any]]] = {}
    for index, (label, kind, method_options) in enumerate(order):
        method, *options = method_options
        out = base / f"{index}-{label}"
        out.mkdir(parents=True, exist_ok=True)
        result = run_worker("benchmarks.framework_tax", worker_argv(kind, steps, batch, device, out, method, tuple(options)))
        print(f"  [{label}] mean step {result['mean_step_s']:.3f}s, {result['tokens_per_s']:.0f} tok/s, "
              f"peak {result['peak_train_bytes'] / 2**20:.0f} MiB", flush=True)
        results.setdefault(label, []).append(result)
    return results


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    steps, batch, pairs = (3, 2, 1) if args.quick else (10, 8, 2)
    base = workdir(args, "framework_tax")
    print(f"item 2: kbit train vs peft+trl script, {steps} steps, batch {batch}, {pairs} alternating pairs", flush=True)
    order = [run for _ in range(pairs) for run in (("kbit", "kbit", KBIT), ("ref", "reference", ("qlora",)),
                                                   ("trl-bf16-adapter", "reference-trl", ("qlora",)))]
    runs = train_runs(order, steps, batch, args.device, base)
    kbit, ref, trl = runs["kbit"], runs["ref"], runs["trl-bf16-adapter"]
    step_t = median([r["mean_step_s"] for r in trl])
    trl_diff = max(abs(a - b) for k, r in zip(kbit, trl) for a, b in zip(k["losses"], r["losses"]))
    step_k, step_r = median([r["mean_step_s"] for r in kbit]), median([r["mean_step_s"] for r in ref])
    mem_k, mem_r = median([r["peak_train_bytes"] for r in kbit]), median([r["peak_train_bytes"] for r in ref])
    tok_k, tok_r = median([r["tokens_per_s"] for r in kbit]), median([r["tokens_per_s"] for r in ref])
    loss_diff = max(abs(a - b) for k, r in zip(kbit, ref) for a, b in zip(k["losses"], r["losses"]))
    same_length = all(len(k["losses"]) == len(r["losses"]) == steps for k, r in zip(kbit, ref))
    memory = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "ru_maxrss at train end"
    shown = ", ".join(f"{x:.4f}" for x in kbit[0]["losses"])
    return [
        Figure(ITEM, "step time (mean after step 1)", step_k, step_r, ratio(step_k, step_r), "<= 1.02", "s",
               f"median of {pairs} runs each, {steps} steps x batch {batch}, {args.device}"),
        Figure(ITEM, "peak memory", mem_k / 2**20, mem_r / 2**20, ratio(mem_k, mem_r), "<= 1.00", "MiB", memory),
        Figure(ITEM, "tokens per second", tok_k, tok_r, ratio(tok_k, tok_r), "", "tok/s", "informational"),
        Figure(ITEM, "loss curve max |kbit - ref| per step", loss_diff, 0.0, loss_diff, "<= 0.0001", "loss",
               f"ratio column = the difference; {steps} steps equal length: {same_length}; kbit losses {shown}",
               passed=None if not same_length else loss_diff <= 1e-4),
        Figure(ITEM, "step time, fp32 adapter (kbit) vs trl's bf16 adapter", step_k, step_t, ratio(step_k, step_t), "",
               "s", f"informational; loss curves differ by up to {trl_diff:.2e}"),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--worker", choices=("kbit", "reference", "reference-trl"), help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--method", default="qlora", help=argparse.SUPPRESS)
    p.add_argument("-o", "--option", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    setup(args)
    if args.worker:
        emit_result((kbit_worker if args.worker == "kbit" else reference_worker)(args))
        return []
    figures = measure(args)
    finish(figures, args, "Item 2: no framework tax")
    return figures


if __name__ == "__main__":
    main()
