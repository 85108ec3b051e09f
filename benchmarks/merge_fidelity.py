"""Item 4, merges that keep the training: kbit's qlora merge against PEFT's default merge.

A short real ``kbit train`` run (qlora) produces a non-trivial adapter. The reference model is that
adapter on the 4-bit base it was trained against. Compared with it on held-out prompt+answer texts:

- kbit's merged model (``merged/`` of the run: the adapter folded into the *dequantized* base);
- PEFT's ``merge_and_unload()`` on the 4-bit base (PEFT's default: dequantize, add, re-quantize).

Figures: max and mean absolute logit error of each against the reference, their ratio PEFT/kbit
(target >= 100: kbit's error at least 100x smaller) and kbit's top-1 agreement (target >= 99.9%).
The run's merged model is kept in the work folder for item 5 (post-training quantization).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (Figure, arith_data, check_device, finish, model_path, no_cpu_repacking, parser,
                                probe_batches, ratio, setup, timed, tokenizer, workdir)

ITEM = "4 merge fidelity"


def train_run(run_dir: Path, steps: int, batch: int) -> Path:
    """A qlora ``kbit train`` run (adapter + merged model) in ``run_dir``, reused when already there."""
    if (run_dir / "merged" / "config.json").is_file() and (run_dir / "adapter" / "adapter_config.json").is_file():
        return run_dir
    from kbit.core.train.config import TrainConfig
    from kbit.core.train.pipeline import run_training

    print(f"  training qlora for {steps} steps (batch {batch}) into {run_dir}", flush=True)
    config = TrainConfig(model=model_path(), method="qlora", max_steps=steps, batch_size=batch, eval_limit=0, logging_steps=5,
                         save_steps=steps + 1000, output=str(run_dir), overwrite=True)
    _, seconds = timed(lambda: run_training(config))
    print(f"  trained and merged in {seconds:.0f}s", flush=True)
    return run_dir


def quantized_base(device: str) -> Any:
    """The 4-bit base exactly as qlora loads it (kbit's own quant config)."""
    from kbit.core.system.device import detect_device
    from kbit.core.model.sources import load_causal_lm
    from kbit.core.methods.registry import get_method

    method = get_method("qlora")
    spec = method.resolve_spec({}, detect_device())
    model = load_causal_lm(model_path(), quant_config=method.build_quant_config(spec),
                           dtype=spec.training.compute_dtype)
    # bitsandbytes would repack the 4-bit weights on a CPU's first no-grad forward (bf16 scales,
    # no double quant): keep them as trained, as kbit's qlora prepare_model does.
    return no_cpu_repacking(model)


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    from peft import PeftModel

    from kbit.core.evaluate.loading import load_plain
    from kbit.core.model.merge import logit_agreement

    steps, batch, prompts = (3, 2, 16) if args.quick else (20, 8, 100)
    run_dir = train_run(workdir(args, "merge_fidelity") / "run", steps, batch)
    adapter = str(run_dir / "adapter")
    tok = tokenizer()
    batches = probe_batches(tok, arith_data().held_out[:prompts], device=args.device)
    print(f"item 4: merge fidelity on {prompts} held-out prompts", flush=True)

    reference = PeftModel.from_pretrained(quantized_base(args.device), adapter).eval()
    kbit_merged = load_plain(str(run_dir / "merged")).to(args.device).eval()
    kbit = logit_agreement(reference, kbit_merged, batches)
    del kbit_merged
    peft_merged = PeftModel.from_pretrained(quantized_base(args.device), adapter).merge_and_unload()
    no_cpu_repacking(peft_merged)  # the re-quantized weights must not be repacked either
    peft = logit_agreement(reference, peft_merged.eval(), batches)
    # How far training moved the model (adapter on vs the bare 4-bit base): the size of the update.
    base = logit_agreement(reference, quantized_base(args.device).eval(), batches)
    note = f"vs adapter on 4-bit base; {kbit['positions']} positions; {steps}-step run"
    return [
        Figure(ITEM, "max |logit error|: PEFT / kbit", kbit["max_abs_logit_diff"], peft["max_abs_logit_diff"],
               ratio(peft["max_abs_logit_diff"], kbit["max_abs_logit_diff"]), ">= 100", "logit",
               f"kbit=kbit merge, ref=PEFT merge_and_unload on 4-bit base, ratio=PEFT/kbit; {note}"),
        Figure(ITEM, "mean |logit error|: PEFT / kbit", kbit["mean_abs_logit_diff"], peft["mean_abs_logit_diff"],
               ratio(peft["mean_abs_logit_diff"], kbit["mean_abs_logit_diff"]), ">= 100", "logit", note),
        Figure(ITEM, "top-1 agreement with adapter model", kbit["top1_agreement"], peft["top1_agreement"],
               kbit["top1_agreement"], ">= 0.999", "fraction", "ratio column = kbit's agreement; ref = PEFT's"),
        Figure(ITEM, "adapter effect: mean |logit change|", base["mean_abs_logit_diff"], None, None, "", "logit",
               f"adapter on vs off (size of the trained update); top-1 changed at "
               f"{1 - base['top1_agreement']:.1%} of positions"),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 4: merges that keep the training")
    return figures


if __name__ == "__main__":
    main()
