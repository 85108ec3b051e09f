"""Where the run's merge check draws its line: honest merges against broken ones, measured side by side.

    python benchmarks/merge_gate.py RUN [RUN ...]   # runs written by ``kbit train`` (adapter/ + a merge)
    python benchmarks/merge_gate.py --tiny DIR      # first trains a short run per built-in merging method
                                                    # on a tiny random model into DIR, then measures those

For each run, the trained adapter model is reloaded as ``kbit eval`` loads it and compared, on the
merge check's own probe (``kbit.core.model.merge.probe_batches``, computed as the check computes), with:
- the honest merge, as ``kbit train`` builds it (``merged_model``);
- broken merges: the merge base scaled ×0.99, ×1.01, ×0.95, ×1.05 (a ``dequantize_base`` whose scales
  are off), and the honest merge with one module's update left out (the module whose update is the
  median by norm: a dropped layer).
Printed per merge: max |Δlogit| against the adapter model, that as a share of the adapter's own
effect (max |Δlogit| adapter on vs off, ``kbit.core.model.merge.adapter_effect``) or of the largest logit,
whichever is larger, the run's bound for the precision of the weights compared, top-1 agreement, and
whether ``kbit train``'s merge check (``check_fidelity``) keeps or refuses it.
``--json FILE`` writes the rows.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCALES = (0.99, 1.01, 0.95, 1.05)
TINY_METHODS = {"lora": ("lora",), "qlora": ("qlora",), "qalora": ("qalora",), "torchao-int8": ("torchao-int8",),
                "gptq": ("gptq",), "lora-dora": ("lora", "-o", "peft_type=dora"), "qlora-dora": ("qlora", "-o", "peft_type=dora")}
TINY_TRAIN = ("--batch-size", "4", "--max-examples", "120", "--eval-limit", "0",
              "--logging-steps", "10", "--lr", "1e-3")


def train_tiny(directory: Path, steps: int) -> list[Path]:
    """A short run per built-in merging method on one tiny random model (reused when already there)."""
    from kbit.testing.tiny import make_tiny_model

    model = directory / "tiny-model"
    if not (model / "config.json").is_file():
        make_tiny_model(model, hidden_size=128)
    runs = []
    for label, (method, *options) in TINY_METHODS.items():
        run = directory / label
        if not (run / "merged" / "config.json").is_file():
            result = subprocess.run([sys.executable, "-m", "kbit", "train", "--model", str(model), "--method", method, *options,
                                     "--output", str(run), "--overwrite", "--max-steps", str(steps), "--merge-tolerance", "1", *TINY_TRAIN], capture_output=True, text=True)
            if result.returncode != 0:
                print(f"  {label}: training failed: {result.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
        runs.append(run)
    return runs


def _perturbed(merge_base: Any, adapter: Path, scale: float) -> Any:
    from peft import PeftModel

    import torch

    base = copy.deepcopy(merge_base)
    head = base.get_output_embeddings()
    with torch.no_grad():
        for module in base.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.weight.mul_(scale)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def _dropped(merged: Any, merge_base: Any) -> tuple[Any, str]:
    """``merged`` with the median-by-norm module update taken out again, and that module's name (None
    where no module was updated)."""
    import torch

    bases = dict(merge_base.named_modules())
    updates = sorted((float((module.weight - bases[name].weight).detach().norm()), name)
                     for name, module in merged.named_modules()
                     if isinstance(module, torch.nn.Linear) and name in bases and module.weight.shape == bases[name].weight.shape
                     and float((module.weight - bases[name].weight).detach().norm()) > 0)
    if not updates:
        return None, ""
    _, name = updates[len(updates) // 2]
    dropped = copy.deepcopy(merged)
    with torch.no_grad():
        dropped.get_submodule(name).weight.copy_(bases[name].weight)
    return dropped, name


def measure_run(run: Path, merge_dtype: str | None = None) -> list[dict[str, Any]]:
    from peft import PeftModel

    from kbit.core.model.bases import load_base, load_merge_base, prepare_for_training
    from kbit.core.evaluate.loading import _run_base_path
    from kbit.core.model.merge import (MergeCheckFailed, adapter_effect, base_dtype, check_fidelity, computing_in,
                                 logit_agreement, merge_tolerance, merged_model, probe_batches)
    from kbit.core.model.sources import ModelSource, load_tokenizer
    from kbit.core.model.quantized_linear import exact_activations
    from kbit.core.runs.record import read_record
    from kbit.core.quantize import run_examples
    from kbit.core.methods.registry import get_method

    record = read_record(run)
    method, spec = get_method(record.method), record.spec
    policy = method.merge_policy(spec)
    if merge_dtype:  # as -o merge_dtype=… would have merged
        import attrs

        spec = attrs.evolve(spec, training=attrs.evolve(spec.training, merge_dtype=merge_dtype))
        policy = attrs.evolve(policy, dtype=merge_dtype)
    base_path = _run_base_path(run, record)
    data = run_examples(record)
    tokenizer = load_tokenizer(ModelSource(path=base_path, name=run.name, origin="local"))
    batches = probe_batches(tokenizer, data.held_out)
    # As the run trained it: the method's prepare_model too (qlora's, e.g., keeps bitsandbytes from
    # repacking the 4-bit weights with rounded scales on a CPU).
    prepared = prepare_for_training(method, spec, policy, load_base(method, spec, base_path))
    reference = PeftModel.from_pretrained(prepared, str(run / "adapter")).eval()
    rows = []
    precision = base_dtype(reference)
    tolerance = merge_tolerance(precision, policy.dtype)
    with computing_in(reference, policy.dtype), exact_activations(reference):
        effect = adapter_effect(reference, batches)

        def row(name: str, candidate: Any) -> None:
            figures = {**logit_agreement(reference, candidate.eval(), batches), "adapter_effect": effect}
            share = figures["max_abs_logit_diff"] / max(effect, figures["max_abs_logit"])
            try:
                check_fidelity(figures, 0.99, method.name, "", tolerance=tolerance)
                verdict = "kept"
            except MergeCheckFailed as failed:
                verdict = "refused (top-1)" if "top-1 predictions" in str(failed) else "refused (logits)"
            rows.append({"run": str(run), "method": method.name, "dtype": policy.dtype, "merge": name, "base_dtype": precision,
                         "share": share, "tolerance": tolerance, "verdict": verdict, **figures})
            print(f"  {method.name:12s} {precision:8s} {name:22s} max|Δ| {figures['max_abs_logit_diff']:9.3g}  "
                  f"share {share:9.3g} (≤ {tolerance:.3g})  top-1 {100 * figures['top1_agreement']:6.2f}%  {verdict:16s} "
                  f"(effect {effect:.3g}, {figures['positions']} positions)", flush=True)

        merged, _ = merged_model(method, spec, policy, base_path, run / "adapter")
        row("honest", merged)
        merge_base, _ = load_merge_base(method, spec, policy, base_path)
        for scale in SCALES:
            row(f"base ×{scale:g}", _perturbed(merge_base, run / "adapter", scale))
        dropped, name = _dropped(merged, merge_base)
        if dropped is not None:
            row(f"dropped {name.split('.', 2)[-1] if name.count('.') > 1 else name}", dropped)
    return rows


def rejudged(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row judged by today's ``check_fidelity`` and bound (the measured figures unchanged)."""
    from kbit.core.model.merge import MergeCheckFailed, check_fidelity, merge_tolerance

    tolerance = merge_tolerance(row["base_dtype"], row["dtype"])
    share = row["max_abs_logit_diff"] / max(row["adapter_effect"], row["max_abs_logit"])
    try:
        check_fidelity(row, 0.99, row["method"], "", tolerance=tolerance)
        verdict = "kept"
    except MergeCheckFailed as failed:
        verdict = "refused (top-1)" if "top-1 predictions" in str(failed) else "refused (logits)"
    print(f"  {row['method']:12s} {row['base_dtype']:8s} {row['merge']:22s} max|Δ| {row['max_abs_logit_diff']:9.3g}  "
          f"share {share:9.3g} (≤ {tolerance:.3g})  top-1 {100 * row['top1_agreement']:6.2f}%  {verdict:16s} "
          f"(effect {row['adapter_effect']:.3g}, {row['positions']} positions)", flush=True)
    return {**row, "share": share, "tolerance": tolerance, "verdict": verdict}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--tiny", type=Path, help="train tiny runs of every built-in merging method here first")
    parser.add_argument("--tiny-steps", type=int, default=20, help="training steps of each tiny run")
    parser.add_argument("--merge-dtype", help="merge in this dtype instead of the run's (as -o merge_dtype=…)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--rejudge", type=Path, nargs="+", default=[],
                        help="rows an earlier run wrote with --json: judged again by today's check, nothing re-measured")
    args = parser.parse_args(argv)
    runs = [*(train_tiny(args.tiny, args.tiny_steps) if args.tiny else []), *args.runs]
    rows = [row for run in runs for row in measure_run(run, args.merge_dtype)]
    rows += [rejudged(row) for path in args.rejudge for row in json.loads(path.read_text())]
    honest = [r["share"] for r in rows if r["merge"] == "honest"]
    broken = [r["share"] for r in rows if r["merge"] != "honest"]
    if honest and broken:
        print(f"honest merges: largest share {max(honest):.3g}; broken ones: smallest {min(broken):.3g}; "
              f"honest refused: {sum(r['verdict'] != 'kept' for r in rows if r['merge'] == 'honest')}/{len(honest)}, "
              f"broken kept: {sum(r['verdict'] == 'kept' for r in rows if r['merge'] != 'honest')}/{len(broken)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
