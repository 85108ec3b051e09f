"""Where the export check draws its line: honest GGUF files against files with one damaged tensor, measured.

    python benchmarks/export_gate.py [MODEL_DIR ...] [--types f16 q8_0 q5_0 q4_0] [--damage q8_0]
                                     [--limit 100] [--runtime llama.cpp] [--json FILE]

Sources: the unfine-tuned default base (always) and the model folders given (a run's ``merged/``).
Each is written as a GGUF of every ``--types`` type by kbit's writer and checked as ``kbit export``
checks it (``kbit.core.export.check.check_gguf``, with every bound open so that each figure is
printed); then, for the ``--damage`` type, the first two sources are written again with one tensor of
the middle layer damaged and checked against the undamaged folder:
- ``q unpermuted``: ``self_attn.q_proj`` without llama.cpp's rotary row order (a converter's classic bug);
- ``down ×0.5``: ``mlp.down_proj`` with a wrong scale;
- ``o zeroed``: ``self_attn.o_proj`` written as zeros (a tensor lost on the way);
- ``up 1% noise``: 1% of ``mlp.up_proj``'s entries replaced by noise 10× their spread (corrupt bytes).
Printed per file: answer-token KL (mean, nats), KL on every position, top-1 plain and within near-ties,
held-out exact match against the source's, and whether ``kbit export``'s gate for the type keeps it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DAMAGES = ("q unpermuted", "down ×0.5", "o zeroed", "up 1% noise")


def _damaged(source: Path, damage: str, target: Path) -> Path:
    """``source`` saved to ``target`` with ``damage`` done to one tensor of its middle layer."""
    import torch

    from kbit.core.model.sources import ModelSource, load_causal_lm, load_tokenizer

    model = load_causal_lm(str(source), dtype="float32")
    layer = model.model.layers[model.config.num_hidden_layers // 2]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if damage == "q unpermuted":
            weight = layer.self_attn.q_proj.weight
            heads = model.config.num_attention_heads
            rows = weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).transpose(1, 2).reshape(weight.shape)
            weight.copy_(rows)
        elif damage == "down ×0.5":
            layer.mlp.down_proj.weight.mul_(0.5)
        elif damage == "o zeroed":
            layer.self_attn.o_proj.weight.zero_()
        else:
            weight = layer.mlp.up_proj.weight
            hit = torch.rand(weight.shape, generator=generator) < 0.01
            noise = torch.randn(weight.shape, generator=generator) * 10 * float(weight.std())
            weight.copy_(torch.where(hit, noise, weight))
    model.save_pretrained(target, safe_serialization=True)
    load_tokenizer(ModelSource(path=str(source), name=source.name, origin="local")).save_pretrained(target)
    return target


def _check(model_dir: Path, source: Path, file_type: str, items: list[Any], task: str, source_em: float,
           runtime: str, work: Path) -> dict[str, Any]:
    from kbit.core.export.check import Gate, check_gguf
    from kbit.core.export.gguf import write_gguf
    from kbit.core.export.gguf import BaseModel

    target = work / f"{model_dir.name}-{file_type}.gguf"
    write_gguf(model_dir, target, file_type, name=model_dir.name, base=BaseModel(name=source.name))
    figures = check_gguf(target, source, task, items, Gate(None, None), source_exact_match=source_em, runtime=runtime)
    target.unlink()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q5_0", "q4_0"])
    parser.add_argument("--damage", default="q8_0", help="the type the damaged files are written in")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--runtime", default="llama.cpp")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rejudge", type=Path, nargs="+", default=[],
                        help="rows an earlier run wrote with --json: judged again by today's gates, nothing re-measured")
    args = parser.parse_args(argv)
    if args.rejudge:
        from kbit.core.export.check import Gate, failures_of

        for row in (row for path in args.rejudge for row in json.loads(path.read_text())):
            failures = failures_of(row, Gate.for_type(row["type"]))
            print(f"  {Path(row['model']).parent.name + '/' + Path(row['model']).name:40.40s} {row['type']:5s} {row['file']:13s} KL answers {row['answer_kl']:8.4f} "
                  f"all {row['kl']:8.4f}  top-1 {row['top1_agreement']:7.2%} (ties {row['top1_agreement_within_ties']:7.2%})  "
                  f"EM {row['exact_match']:5.0%} vs {row['source']['exact_match']:4.0%}  {'kept' if not failures else 'refused'}")
        return

    from kbit.core.data import load_task_data
    from kbit.core.export.check import Gate, exact_match, failures_of
    from kbit.core.model.sources import ModelSource, load_causal_lm, load_tokenizer, resolve_model

    data = load_task_data("arith")
    items = list(data.held_out[:args.limit])
    sources = [Path(resolve_model(None).path), *args.sources]
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)

        def measure(model_dir: Path, source: Path, file_type: str, label: str, source_em: float) -> None:
            figures = _check(model_dir, source, file_type, items, data.task, source_em, args.runtime, work)
            failures = failures_of(figures, Gate.for_type(file_type))
            rows.append({**figures, "model": str(source), "type": file_type, "file": label, "kept": not failures,
                         "refused_for": failures})
            print(f"  {source.parent.name + '/' + source.name:28s} {file_type:5s} {label:13s} "
                  f"KL answers {figures['answer_kl']:8.4f} all {figures['kl']:8.4f}  top-1 {figures['top1_agreement']:7.2%} "
                  f"(ties {figures['top1_agreement_within_ties']:7.2%})  EM {figures['exact_match']:5.0%} vs "
                  f"{source_em:4.0%}  {'kept' if not failures else 'refused'}", flush=True)

        for index, source in enumerate(sources):
            model = load_causal_lm(str(source), dtype="float32").eval()
            tokenizer = load_tokenizer(ModelSource(path=str(source), name=source.name, origin="local"))
            source_em = exact_match(model, tokenizer, data.task, items, 16)
            del model
            for file_type in args.types:
                measure(source, source, file_type, "honest", source_em)
            if index < 2:
                for damage in DAMAGES:
                    damaged = _damaged(source, damage, work / f"damaged-{index}")
                    measure(damaged, source, args.damage, damage, source_em)
    honest = [r for r in rows if r["file"] == "honest"]
    broken = [r for r in rows if r["file"] != "honest"]
    print(f"honest files refused: {sum(not r['kept'] for r in honest)}/{len(honest)}; "
          f"damaged files kept: {sum(r['kept'] for r in broken)}/{len(broken)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
