"""Item 1, storage at the limit: bits per quantized weight, measured from the model's actual tensors.

For every method, the quantized linear layers' stored bytes (packed weights plus every scale, zero
point and quantization-state tensor) over their logical ``in_features * out_features``, against the
format's floor for this model's layer shapes:

- NF4 + double quantization: 4 + 8/64 + 32/(64*256) = 4.127 (8-bit block absmax, fp32 second level);
- NF4 without double quantization: 4 + 32/64 = 4.5 (fp32 absmax per 64-weight block);
- int8 with one fp32 scale per output row: 8 + 32/in_features, averaged over the layers' weights;
- GPTQ/AWQ, group g: 4 + (scale bits + zero-point bits)/g. llm-compressor stores scales in the
  model's dtype: float32 here (g=64: 4.5 for symmetric GPTQ, 4.5625 for AWQ with 4-bit zero points);
  the often quoted 4 + (16+4)/g assumes fp16 scales and is shown in the note.

bnb and torchao models are measured in memory (``kbit.core.measure.metrics.linear_weight_bits``);
GPTQ/AWQ from their saved compressed-tensors checkpoints (item 5's outputs when present, else this
item quantizes the base model with few calibration texts: the storage does not depend on them).
Target: within 1% of the floor. Also the whole-model footprint against fp32 (and bf16 = fp32/2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Figure, finish, model_path, parser, ratio, setup, workdir

ITEM = "1 storage"
# (label, method, options)
LOADED = (
    ("qlora nf4+dq", "qlora", {}),
    ("qlora nf4 no dq", "qlora", {"double_quant": "false"}),
    ("bnb-int8", "bnb-int8", {}),
    ("torchao-int8", "torchao-int8", {}),
)


def linear_shapes(model: Any) -> list[tuple[int, int]]:
    """(in_features, out_features) of the base linear layers a quantizer targets (head excluded)."""
    import torch

    head = model.get_output_embeddings()
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def floor_bits(kind: str, shapes: list[tuple[int, int]], group: int = 64, scale_bits: int = 32, zero_bits: int = 0) -> float:
    weights = sum(i * o for i, o in shapes)
    if kind == "nf4-dq":
        return 4 + 8 / 64 + 32 / (64 * 256)
    if kind == "nf4":
        return 4 + 32 / 64
    if kind == "int8-row":
        return 8 + 32 * sum(o for _, o in shapes) / weights
    if kind == "int4-group":
        return 4 + (scale_bits + zero_bits) / group
    raise ValueError(kind)


FLOORS = {"qlora nf4+dq": "nf4-dq", "qlora nf4 no dq": "nf4", "bnb-int8": "int8-row", "torchao-int8": "int8-row"}


def load_with(method_name: str, options: dict[str, str]) -> Any:
    from kbit.core.system.device import detect_device
    from kbit.core.model.sources import load_causal_lm
    from kbit.core.methods.registry import get_method

    method = get_method(method_name)
    spec = method.resolve_spec(options, detect_device())
    return load_causal_lm(model_path(), quant_config=method.build_quant_config(spec), dtype=spec.training.compute_dtype)


def checkpoint_bits(directory: Path) -> dict[str, Any]:
    """Bits per weight of a compressed-tensors checkpoint's quantized layers, from its saved tensors."""
    import json

    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    layers = {key.rsplit(".", 1)[0] for key in tensors if key.endswith(".weight_packed")}
    stored = logical = 0
    for layer in layers:
        out_features, in_features = (int(x) for x in tensors[f"{layer}.weight_shape"])
        logical += out_features * in_features
        stored += sum(t.numel() * t.element_size() for k, t in tensors.items() if k.rsplit(".", 1)[0] == layer)
    quant = json.loads((directory / "config.json").read_text())["quantization_config"]
    weights = quant["config_groups"]["group_0"]["weights"]
    scale = next(t for k, t in tensors.items() if k.endswith(".weight_scale"))
    return {
        "bits": 8 * stored / logical, "group": int(weights["group_size"]), "symmetric": bool(weights["symmetric"]),
        "scale_bits": scale.element_size() * 8, "total_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }


def ptq_outputs(args: argparse.Namespace) -> dict[str, Path]:
    """gptq/awq checkpoints: item 5's in the work folder, else quantize the base model here."""
    from benchmarks.ptq import kbit_quantize

    found: dict[str, Path] = {}
    shared = Path(args.workdir) / "ptq" if args.workdir else None
    for name in ("gptq", "awq"):
        candidate = shared / f"kbit-{name}" if shared else None
        if candidate is not None and (candidate / "config.json").is_file():
            found[name] = candidate
            continue
        target = workdir(args, "storage") / name
        print(f"  quantizing the base model with {name} (no item 5 output to reuse)", flush=True)
        kbit_quantize(name, Path(model_path()), target, samples=4 if args.quick else 8)
        found[name] = target
    return found


def measure(args: argparse.Namespace) -> list[Figure]:
    from kbit.core.evaluate.loading import load_plain
    from kbit.core.measure.metrics import linear_weight_bits, memory_footprint

    print("item 1: storage, bits per quantized weight from the tensors", flush=True)
    base = load_plain(model_path())
    shapes = linear_shapes(base)
    fp32_bytes = memory_footprint(base)
    fp32_disk = sum(f.stat().st_size for f in Path(model_path()).glob("*.safetensors"))
    weights = sum(i * o for i, o in shapes)
    del base
    figures: list[Figure] = []
    footprints: list[Figure] = []
    for label, method, options in LOADED:
        model = load_with(method, options)
        measured = linear_weight_bits(model)
        floor = floor_bits(FLOORS[label], shapes)
        assert measured["linear_weights"] == weights, (label, measured["linear_weights"], weights)
        figures.append(Figure(ITEM, f"bits/weight {label}", measured["bits_per_weight"], floor,
                              ratio(measured["bits_per_weight"], floor), "<= 1.01", "bit", "ref = format floor"))
        size = memory_footprint(model)
        footprints.append(Figure(ITEM, f"footprint {label} / fp32", size / 2**20, fp32_bytes / 2**20,
                                 ratio(size, fp32_bytes), "", "MiB",
                                 f"vs bf16 {2 * size / fp32_bytes:.3f}; embeddings stay unquantized"))
        del model
    for name, directory in ptq_outputs(args).items():
        found = checkpoint_bits(directory)
        zero_bits = 0 if found["symmetric"] else 4
        floor = floor_bits("int4-group", shapes, found["group"], found["scale_bits"], zero_bits)
        fp16_floor = floor_bits("int4-group", shapes, found["group"], 16, zero_bits)
        figures.append(Figure(ITEM, f"bits/weight {name} g{found['group']}", found["bits"], floor,
                              ratio(found["bits"], floor), "<= 1.01", "bit",
                              f"saved checkpoint; scales fp{found['scale_bits']} (floor with fp16 scales: {fp16_floor:.4g})"))
        footprints.append(Figure(ITEM, f"checkpoint {name} / fp32", found["total_bytes"] / 2**20, fp32_disk / 2**20,
                                 ratio(found["total_bytes"], fp32_disk), "", "MiB",
                                 f"saved tensors vs fp32 safetensors; vs bf16 {2 * found['total_bytes'] / fp32_disk:.3f}"))
    return figures + footprints


def main(argv: list[str] | None = None) -> list[Figure]:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 1: storage at the limit")
    return figures


if __name__ == "__main__":
    main()
