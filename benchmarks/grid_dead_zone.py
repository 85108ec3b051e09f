"""How much of a small weight update survives rounding to a GGUF grid, on the default model's own weights.

    python benchmarks/grid_dead_zone.py [--layer model.layers.5.mlp.up_proj.weight] [--grids q4_1 q4_0 q5_0]

The default model is SmolLM2's Q4_1 file, so its weights already lie on the Q4_1 grid. For a random rank-8
update ``ΔW`` scaled to a share of the weight's standard deviation, prints the share of ``ΔW`` that
``round(W + ΔW) - round(W)`` keeps (its projection on ``ΔW``): what quantization-aware training (qat)
can see of an update of that size.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="model.layers.5.mlp.up_proj.weight")
    parser.add_argument("--grids", nargs="+", default=["q4_1", "q4_0", "q5_0"])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.3])
    args = parser.parse_args()

    import torch
    from safetensors import safe_open

    from kbit.core.export.grids import round_to_grid
    from kbit.core.model.sources import resolve_model

    folder = Path(resolve_model("default").path)
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as tensors:
            if args.layer in tensors.keys():
                weight = tensors.get_tensor(args.layer).float()
                break
    else:
        raise SystemExit(f"{args.layer} is not a tensor of {folder}")
    generator = torch.Generator().manual_seed(0)
    update = torch.randn(weight.shape[0], 8, generator=generator) @ torch.randn(8, weight.shape[1], generator=generator)
    update /= update.std()
    print(f"{args.layer} {tuple(weight.shape)}; on the q4_1 grid already: {torch.equal(round_to_grid(weight, 'q4_1'), weight)}")
    print("| grid | " + " | ".join(f"ΔW = {share:g}·std(W)" for share in args.shares) + " |")
    print("|---|" + "---|" * len(args.shares))
    for grid in args.grids:
        base = round_to_grid(weight, grid)
        kept = []
        for share in args.shares:
            delta = share * weight.std() * update
            moved = round_to_grid(weight + delta, grid) - base
            kept.append(float((moved * delta).sum() / (delta * delta).sum()))
        print(f"| {grid} | " + " | ".join(f"{100 * k:.0f}% kept" for k in kept) + " |")


if __name__ == "__main__":
    main()
