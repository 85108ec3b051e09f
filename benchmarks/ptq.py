"""Item 5, post-training quantization: gptq and awq through kbit's plugins.

The unquantized model is the merged model of item 4's short qlora run (trained here when item 4 has
not left one in the work folder). Each method quantizes it through its plugin's ``quantize_model``
hook (as ``kbit train``/``kbit quantize`` do, via ``kbit.core.quantize.quantize_into``), with ~32
calibration texts from the training data. Figures:

- wall time of kbit's path against calling llm-compressor's ``oneshot`` directly with the same
  model, data, scheme and modifiers (load + oneshot + save in both): target overhead <= 5%;
- held-out completion loss of each quantized model against the unquantized merged model and
  against NF4 round-to-nearest (the merged model loaded with ``BitsAndBytesConfig`` nf4);
- why awq rounds with GPTQ by default: the same loss for awq with ``-o rounding=rtn`` (AWQ's scales,
  then round-to-nearest, as the AWQ paper does) and for plain round-to-nearest with awq's scheme and
  no AWQ at all (llm-compressor's ``QuantizationModifier`` alone, the control).

The quantized outputs stay in the work folder for item 1 (storage).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (Figure, arith_data, check_device, finish, no_cpu_repacking, parser, ratio, setup,
                                timed, tokenizer, workdir)

ITEM = "5 ptq"
METHODS = ("gptq", "awq")


def kbit_spec(name: str, samples: int, options: dict[str, str] | None = None) -> tuple[Any, Any]:
    from kbit.core.system.device import detect_device
    from kbit.core.methods.registry import get_method

    method = get_method(name)
    return method, method.resolve_spec({"calibration_samples": samples, **(options or {})}, detect_device())


def kbit_quantize(name: str, model_dir: Path, target: Path, samples: int, options: dict[str, str] | None = None) -> float:
    """Quantize ``model_dir`` into ``target`` through the method's hook; returns the wall time."""
    import shutil

    from kbit.core.quantize import calibration_texts, quantize_into

    method, spec = kbit_spec(name, samples, options)
    calibration = calibration_texts(tokenizer(), arith_data().train, spec, method)
    shutil.rmtree(target, ignore_errors=True)
    _, seconds = timed(lambda: quantize_into(method, spec, model_dir, calibration, target))
    return seconds


@contextlib.contextmanager
def unpinned_without_accelerator() -> Iterator[None]:
    """llm-compressor 0.14's AWQ pins its activation cache unconditionally, which raises on a CPU-only
    torch; a plain script needs this workaround too (the same one kbit's awq plugin applies)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def direct_quantize(name: str, model_dir: Path, target: Path, samples: int) -> float:
    """The same quantization as a hand-written llm-compressor script; returns the wall time.

    ``name`` is gptq, awq (kbit's default recipe: AWQ scales, then GPTQ rounding) or rtn (the control:
    awq's scheme rounded to nearest, no AWQ, no calibration)."""
    import time

    started = time.perf_counter()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kbit.core.measure.generation import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    texts = [render_prompt(tok, e) + e.completion for e in arith_data().train[:samples]]
    encoded = tok(texts, truncation=True, max_length=256, add_special_tokens=False)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    # SmolLM2-135M's layer widths (576, 1536) are not multiples of 128: group 64, as kbit picks.
    symmetric = name == "gptq"
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=64))
    groups = {"group_0": scheme}
    context: Any = contextlib.nullcontext()
    if name == "gptq":
        recipe: Any = GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=0.01)
    elif name == "awq":
        recipe = [AWQModifier(duo_scaling=True), GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=0.01)]
        context = unpinned_without_accelerator()
    else:
        recipe = QuantizationModifier(config_groups=groups, ignore=["lm_head"])
    with context:
        oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(texts), max_seq_length=256,
                shuffle_calibration_samples=False)
    model.save_pretrained(target, save_compressed=True)
    tok.save_pretrained(target)
    return time.perf_counter() - started


def held_out_loss(model: Any, device: str, limit: int) -> float:
    from kbit.core.measure.metrics import completion_loss

    return completion_loss(model.to(device) if device == "cuda" and not _is_bnb(model) else model, tokenizer(),
                           arith_data().held_out[:limit])["loss"]


def _is_bnb(model: Any) -> bool:
    return getattr(getattr(model, "config", None), "quantization_config", None) is not None


def nf4_rtn(model_dir: Path) -> Any:
    """The merged model rounded to NF4 (round-to-nearest, double quant) as bitsandbytes loads it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=torch.float32)
    return no_cpu_repacking(model)  # measure NF4 itself, not the CPU repacked (bf16-scale) variant


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    import llmcompressor  # noqa: F401  (imported once here, so neither timed path pays for it)

    from kbit.core.evaluate.loading import load_plain
    from benchmarks.merge_fidelity import train_run

    samples, held_out, repeats = (4, 16, 1) if args.quick else (32, 100, 2)
    steps, batch = (3, 2) if args.quick else (20, 8)
    run_dir = train_run(workdir(args, "merge_fidelity") / "run", steps, batch)  # item 4's run when present
    merged = run_dir / "merged"
    out = workdir(args, "ptq")
    overhead = [m for m in args.overhead.split(",") if m] if args.overhead else ["gptq"]
    print(f"item 5: ptq of {merged} with {samples} calibration texts; direct-oneshot comparison for {overhead}", flush=True)

    figures: list[Figure] = []
    losses: dict[str, float] = {}
    for name in METHODS:
        if name in overhead:
            # Alternating order (direct, kbit, kbit, direct) so warm caches favour neither; best of each.
            direct_t, kbit_t = [], []
            for index in range(repeats):
                pair = [("direct", direct_quantize), ("kbit", kbit_quantize)]
                for label, run in (pair if index % 2 == 0 else pair[::-1]):
                    seconds = run(name, merged, out / f"{label}-{name}", samples)
                    (direct_t if label == "direct" else kbit_t).append(seconds)
            kbit_s, direct_s = min(kbit_t), min(direct_t)
            print(f"  {name}: kbit {kbit_t}, direct oneshot {direct_t} s", flush=True)
            figures.append(Figure(ITEM, f"{name} wall time vs direct oneshot", kbit_s, direct_s, ratio(kbit_s, direct_s),
                                  "<= 1.05", "s", f"best of {repeats} each, alternating; load+oneshot+save, "
                                  f"{samples} calibration texts, group 64"))
        else:
            kbit_s = kbit_quantize(name, merged, out / f"kbit-{name}", samples)
            print(f"  {name}: kbit {kbit_s:.1f}s", flush=True)
            figures.append(Figure(ITEM, f"{name} wall time", kbit_s, None, None, "", "s",
                                  f"no direct run (add --overhead {name}); {samples} calibration texts"))
        losses[name] = held_out_loss(load_plain(str(out / f"kbit-{name}")), args.device, held_out)
    # Why awq rounds with GPTQ: AWQ's scales with round-to-nearest, and round-to-nearest alone.
    seconds = kbit_quantize("awq", merged, out / "kbit-awq-rtn", samples, {"rounding": "rtn"})
    print(f"  awq -o rounding=rtn: kbit {seconds:.1f}s", flush=True)
    losses["awq rounding=rtn"] = held_out_loss(load_plain(str(out / "kbit-awq-rtn")), args.device, held_out)
    direct_quantize("rtn", merged, out / "direct-rtn", samples)
    losses["rtn"] = held_out_loss(load_plain(str(out / "direct-rtn")), args.device, held_out)
    losses["merged"] = held_out_loss(load_plain(str(merged)), args.device, held_out)
    losses["nf4"] = held_out_loss(nf4_rtn(merged), args.device, held_out)
    for name in METHODS:
        # The issue-14 bar: within +0.05 nats of the unquantized merged model (ratio 1.15 at its 0.334).
        figures.append(Figure(ITEM, f"{name} held-out loss vs unquantized", losses[name], losses["merged"],
                              ratio(losses[name], losses["merged"]), "<= 1.15", "loss",
                              f"{held_out} held-out examples; difference {losses[name] - losses['merged']:+.3f}"))
        figures.append(Figure(ITEM, f"{name} held-out loss vs NF4 RTN", losses[name], losses["nf4"],
                              ratio(losses[name], losses["nf4"]), "", "loss", "NF4 = merged model via BitsAndBytesConfig nf4+dq"))
    notes = {"awq rounding=rtn": "awq -o rounding=rtn: AWQ scales, then round-to-nearest (the AWQ paper's rounding)",
             "rtn": "control: W4 g64 asymmetric round-to-nearest, no AWQ (QuantizationModifier alone)"}
    for name, note in notes.items():
        figures.append(Figure(ITEM, f"{name} held-out loss vs unquantized", losses[name], losses["merged"],
                              ratio(losses[name], losses["merged"]), "", "loss",
                              f"{note}; difference {losses[name] - losses['merged']:+.3f}"))
    return figures


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--overhead", help="comma-separated methods also quantized by a direct oneshot call (default: gptq)")
    args = p.parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 5: post-training quantization")
    return figures


if __name__ == "__main__":
    main()
