"""Carry out a method's ``MergePolicy``: fold a trained adapter into a full model and check it.

For quantized bases the adapter is merged into the *dequantized* base — the weights it was trained
against — not into a re-quantized one: re-quantizing after the merge rounds most of a small
update away (PEFT warns of this). The merged model's logits are compared with the adapter model's
on held-out prompts, and the measured difference is returned for the run's metadata.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kbit.core.device import torch_dtype
from kbit.core.method_info import MergePolicy
from kbit.core.models import load_causal_lm
from kbit.core.rundir import atomic_directory


def merged_model(base_path: str, adapter_dir: Path, policy: MergePolicy, quant_config: Any, compute_dtype: str,
                 trust_remote_code: bool = False) -> Any:
    """Load the policy's base, apply the adapter from ``adapter_dir`` and merge it in."""
    from peft import PeftModel

    if policy.base == "dequantized" and quant_config is not None:
        base = load_causal_lm(base_path, quant_config=quant_config, dtype=compute_dtype, trust_remote_code=trust_remote_code)
        base = base.dequantize()
    else:
        base = load_causal_lm(base_path, dtype=policy.dtype, trust_remote_code=trust_remote_code)
    base = base.to(torch_dtype(policy.dtype))
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if policy.lm_head_dtype and not getattr(model.config, "tie_word_embeddings", False):
        model.get_output_embeddings().to(torch_dtype(policy.lm_head_dtype))
    model.config.dtype = torch_dtype(policy.dtype)
    return model


def logit_agreement(reference: Any, candidate: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Max/mean absolute logit difference and top-1 agreement of ``candidate`` against ``reference``.

    NaN-aware: a position where either model's logits are not finite counts as a disagreement with
    an infinite difference (NaN compares unequal to everything, so a plain max or argmax would
    report a broken model as a perfect match).
    """
    import torch

    max_err, total_err, count, agree, positions = 0.0, 0.0, 0, 0, 0
    reference.eval()
    candidate.eval()
    with torch.no_grad():
        for batch in batches:
            ref = reference(**batch).logits.float()
            cand = candidate(**batch).logits.float()
            mask = batch["attention_mask"].bool()
            finite = (torch.isfinite(ref).all(-1) & torch.isfinite(cand).all(-1))[mask]
            diff = (ref - cand).abs()[mask]
            if not bool(finite.all()):
                max_err = math.inf
            good = diff[finite]
            if good.numel():
                max_err = max(max_err, float(good.max()))
            total_err += float(good.sum()) if bool(finite.all()) else math.inf
            count += diff.numel()
            agree += int(((ref.argmax(-1) == cand.argmax(-1))[mask] & finite).sum())
            positions += int(mask.sum())
    return {
        "max_abs_logit_diff": max_err,
        "mean_abs_logit_diff": total_err / max(count, 1),
        "top1_agreement": agree / max(positions, 1),
        "positions": positions,
    }


def save_model(model: Any, tokenizer: Any, target: Path) -> None:
    """Save ``model`` (safetensors) and ``tokenizer`` to ``target`` atomically."""
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
