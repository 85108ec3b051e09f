"""Fidelity of float16 and bfloat16 merges against the float32 merge of a finished kbit run.

    python scripts/merge_dtype_fidelity.py RUN [--limit 100]

For each dtype the run's adapter is merged into its base exactly as ``merge_dtype=<dtype>`` would
(``kbit.core.model.merge.merged_model``: the dequantized 4-bit base for qlora, adapter folded in, weights
stored in that dtype). The stored weights are then upcast and run in float32, so the figures measure
what the merge dtype decides — the rounding of the stored weights — and not the arithmetic of the
machine that later runs them. Compared with the run's float32 ``merged/`` on the run's held-out items
(prompt + answer): max/mean |Δlogit|, top-1 agreement on answer tokens and on all tokens, held-out
exact match of greedy answers; plus the size of the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args(argv)

    import torch

    from kbit.core.export.check import answer_batches, exact_match, logit_figures
    from kbit.core.model.merge import merged_model
    from kbit.core.contract.method_info import MergePolicy
    from kbit.core.model.sources import ModelSource, load_causal_lm, load_tokenizer
    from kbit.core.quantize import run_examples
    from kbit.core.runs.record import read_record
    from kbit.core.methods.registry import get_method

    record = read_record(args.run)
    spec = record.spec
    method = get_method(record.method)
    policy = method.merge_policy(spec)
    data = run_examples(record)
    items = list(data.held_out[: args.limit])
    reference_dir = args.run / "merged"
    tokenizer = load_tokenizer(ModelSource(path=str(reference_dir), name="merged", origin="local"))
    reference = load_causal_lm(str(reference_dir), dtype="float32").eval()
    batches = answer_batches(tokenizer, items)
    rows = [{"dtype": "float32 (merged/)", "bytes": sum(p.numel() * p.element_size() for p in reference.parameters()),
             "exact_match": exact_match(reference, tokenizer, data.task, items, 16)}]
    for dtype in ("bfloat16", "float16"):
        candidate_policy = MergePolicy(action="merge", base=policy.base, dtype=dtype, lm_head_dtype=None)
        merged, _ = merged_model(method, spec, candidate_policy, record.base_model["path"], args.run / "adapter")
        size = sum(p.numel() * p.element_size() for p in merged.parameters())
        merged = merged.to(torch.float32).eval()
        rows.append({"dtype": dtype, "bytes": size, **logit_figures(reference, merged, batches),
                     "exact_match": exact_match(merged, tokenizer, data.task, items, 16)})
        del merged
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
