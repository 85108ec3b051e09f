"""One training-speed lever at a time, off against on, side by side in one process (issue 25).

    python -m benchmarks.step_levers dequantized-cache      # qlora: multiply by a kept float copy of the 4-bit base
    python -m benchmarks.step_levers dequantized-cache --method qalora --rounds 4
    python -m benchmarks.step_levers dropout-mask           # LoRA dropout masks from 16-bit draws, not bernoulli_
    python -m benchmarks.step_levers shared-input           # one A matmul and mask for q/k/v and for gate/up
    python -m benchmarks.step_levers compile-layers         # torch.compile on each decoder layer
    python -m benchmarks.step_levers quantized-base         # lora on the float base (off) against --method (on)

Builds the run as ``benchmarks.profile_step`` does (``kbit train``'s defaults, 400 arith rows, batch 8,
r=16), takes ``--steps`` micro-batches once, then for ``--rounds`` rounds times the same batches with
the lever off and on, alternating which goes first, and prints each side's median step time and the
ratio on ÷ off (below 1: the lever pays). Each side trains the same adapter from the same state:
parameters and optimizer state are restored before every timed pass. ``quantized-base`` is not a
lever of one model but item 3 measured step by step: a lora trainer (off) and a ``--method`` trainer
(on) in the same process, on the same batches; on ÷ off is the inverse of item 3's lora/qlora ratio.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _dequantized_cache(model: Any, on: bool) -> None:
    from kbit.plugin import QuantizedLinear
    from kbit.plugins._bnb import cache_4bit_weights, drop_4bit_weight_cache

    # bitsandbytes' Linear4bit (qlora) and kbit's own quantized layers (qalora, gguf: QuantizedLinear)
    if on:
        cache_4bit_weights(model)
    else:
        drop_4bit_weight_cache(model)
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module._cached_weight = module.dequantize().detach() if on else None


def _bernoulli_mask(shape: Any, p: float, device: Any) -> Any:
    import torch

    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p), 1.0 / (1.0 - p)


_KEEP_MASK: list[Any] = []


def _dropout_mask(model: Any, on: bool) -> None:
    from kbit.core.model import lora_dropout

    if not _KEEP_MASK:
        _KEEP_MASK.append(lora_dropout.keep_mask)
    lora_dropout.keep_mask = _KEEP_MASK[0] if on else _bernoulli_mask  # off: torch's bernoulli_, as before


def _shared_input(model: Any, on: bool) -> None:
    from kbit.core.model.lora_dropout import DropoutLoraA, fuse_lora_dropout

    for module in model.modules():
        if isinstance(module, DropoutLoraA) and module.shared is not None:
            module.shared.release()
    if on:
        fuse_lora_dropout(model)  # groups q/k/v and gate/up again


def _compile_layers(model: Any, on: bool) -> None:
    """torch.compile on each decoder layer (regional compilation: the layers share their code, so the
    compiled graph is reused across them); the warm-up step pays the compilation, printed apart."""
    for layer in (m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")):
        if on:
            layer.compile(dynamic=True)
        else:
            layer._compiled_call_impl = None  # what nn.Module.compile set


LEVERS = {"dequantized-cache": _dequantized_cache, "dropout-mask": _dropout_mask, "shared-input": _shared_input,
          "compile-layers": _compile_layers}
QUANTIZED_BASE = "quantized-base"


def _timed_passes(trainer: Any, batches: list[dict[str, Any]], warmups: list[float]) -> Any:
    """A function ``() -> median step seconds`` that trains ``trainer``'s adapter over ``batches``
    from the same state every time: parameters and optimizer state are restored before each pass, and
    its first step (a warm-up, which also builds any cache) is timed into ``warmups``, not the median."""
    import copy

    import torch

    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    start = ([p.detach().clone() for p in trained], copy.deepcopy(trainer.optimizer.state_dict()))

    def timed_pass() -> float:
        with torch.no_grad():
            for param, value in zip(trained, start[0]):
                param.copy_(value)
        trainer.optimizer.load_state_dict(copy.deepcopy(start[1]))
        times = []
        for batch in [batches[0], *batches]:
            began = time.perf_counter()
            trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - began)
        warmups.append(times[0])
        return statistics.median(times[1:])

    return timed_pass


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lever", choices=sorted([*LEVERS, QUANTIZED_BASE]))
    p.add_argument("--method", default="qlora")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("-o", dest="options", action="append", default=[], help="a method option, KEY=VALUE")
    args = p.parse_args(argv)

    from benchmarks.profile_step import step_trainer

    _, _, trainer = step_trainer(args.method, dict(o.split("=", 1) for o in args.options), 8)
    loader = iter(trainer.get_train_dataloader())
    batches = [dict(trainer._prepare_inputs(next(loader))) for _ in range(args.steps)]
    warmups: dict[bool, list[float]] = {False: [], True: []}
    if args.lever == QUANTIZED_BASE:  # off: lora on the float base, on: --method; the same batches for both
        _, _, plain = step_trainer("lora", {}, 8)
        passes = {False: _timed_passes(plain, batches, warmups[False]), True: _timed_passes(trainer, batches, warmups[True])}
    else:
        timed = {on: _timed_passes(trainer, batches, warmups[on]) for on in (False, True)}  # both from the start state

        def lever_pass(on: bool) -> float:
            LEVERS[args.lever](trainer.model, on)
            return timed[on]()

        passes = {on: (lambda on=on: lever_pass(on)) for on in (False, True)}

    seen: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for on in ((False, True) if round_ % 2 == 0 else (True, False)):
            seen[on].append(passes[on]())
    off, on = statistics.median(seen[False]), statistics.median(seen[True])
    print(f"{args.lever} on {args.method} ({torch.get_num_threads()} threads, {args.steps} steps × {args.rounds} rounds): "
          f"off {off:.3f} s/step, on {on:.3f} s/step, on ÷ off {on / off:.3f}")
    print(f"  first (warm-up) step with the lever on: {', '.join(f'{t:.1f}' for t in warmups[True])} s")
    print("  per round, off: " + " ".join(f"{s:.3f}" for s in seen[False]) + " | on: " + " ".join(f"{s:.3f}" for s in seen[True]))


if __name__ == "__main__":
    main()
