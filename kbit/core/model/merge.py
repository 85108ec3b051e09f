"""Carry out a method's ``MergePolicy``: fold a trained adapter into a full model and check it.

For quantized bases the adapter is merged into the *dequantized* base — the weights it was trained
against — not into a re-quantized one: re-quantizing after the merge rounds most of a small
update away (PEFT warns of this). Which base that is comes from ``kbit.core.model.bases``. The merged
model's logits are compared with the adapter model's on held-out prompts; the figures are recorded,
and ``check_fidelity`` fails the run when the merged model does not reproduce the trained one.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kbit.core.model.bases import load_merge_base, restore_conv1d
from kbit.core.system.device import torch_dtype
from kbit.core.errors import FidelityError
from kbit.core.methods.method import Method
from kbit.core.contract.method_info import MergePolicy
from kbit.core.runs.folder import atomic_directory
from kbit.core.contract.spec import QuantizationSpec


def merged_model(method: Method, spec: QuantizationSpec, policy: MergePolicy, base_path: str, adapter_dir: Path,
                 trust_remote_code: bool = False) -> tuple[Any, str]:
    """The base ``policy`` names with the adapter from ``adapter_dir`` merged in, and what that base was."""
    from peft import PeftModel

    base, described = load_merge_base(method, spec, policy, base_path, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if spec.adapter is not None and spec.adapter.fake_quant is not None:
        from kbit.core.model.fake_quant import round_merged

        round_merged(model, spec.adapter.fake_quant)  # trained through this rounding: merged/ is the trained model
        described = f"{described}, rounded to the {spec.adapter.fake_quant} grid it trained through"
    restore_conv1d(model, trust_remote_code=trust_remote_code)  # a quantized GPT-2's layers, as its checkpoint stores them
    if policy.lm_head_dtype and not getattr(model.config, "tie_word_embeddings", False):
        model.get_output_embeddings().to(torch_dtype(policy.lm_head_dtype))
    model.config.dtype = torch_dtype(policy.dtype)
    return model, described


@contextlib.contextmanager
def computing_in(model: Any, dtype_name: str) -> Iterator[None]:
    """Run ``model`` in ``dtype_name`` for the duration: its lower-precision float parameters and buffers
    upcast (exactly) and every quantized layer's compute dtype (bitsandbytes' ``compute_dtype``) set
    to it; all restored afterwards (a downcast of an exact upcast is exact).

    The merge check compares the trained model with the merged one. Where training computed in bf16,
    the trained model's own bf16 activations flip ~1% of near-tied top-1 predictions against the same
    weights computed in float32, which is what the merged float32 model does; computed alike, the check
    measures the merge alone. Packed quantized weights (parameter subclasses) are left untouched, and
    so is the Trainer's mixed precision: accelerate leaves its autocast wrapper on the trained model's
    ``forward`` (keeping the unwrapped one as ``_original_forward``), which would compute in bf16 again.
    """
    import torch

    target = torch_dtype(dtype_name)
    changed: list[tuple[Any, Any]] = []
    computes: list[tuple[Any, Any]] = []
    autocast_forward = model.__dict__.get("forward") if "_original_forward" in model.__dict__ else None
    try:
        if autocast_forward is not None:
            model.forward = model.__dict__["_original_forward"]
        for tensor in [*model.parameters(), *model.buffers()]:
            if type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.is_floating_point() \
                    and tensor.element_size() < target.itemsize:
                changed.append((tensor, tensor.dtype))
                tensor.data = tensor.data.to(target)
        for module in model.modules():
            if isinstance(getattr(module, "compute_dtype", None), torch.dtype) and module.compute_dtype != target:
                computes.append((module, module.compute_dtype))
                module.compute_dtype = target
        yield
    finally:
        if autocast_forward is not None:
            model.forward = autocast_forward
        for tensor, dtype in changed:
            tensor.data = tensor.data.to(dtype)
        for module, dtype in computes:
            module.compute_dtype = dtype


class MergeCheckFailed(FidelityError):
    """The merged model (or a file written from it) does not reproduce the trained adapter model."""


# The merge check's logit bound, as a share of the larger of the adapter's own effect and the logits'
# size (rounding noise scales with the logits, a merge's arithmetic with the update): 1e-3 where float32
# weights are compared; one unit of rounding (eps) of a 16-bit dtype the trained base was held in (a
# merge into the float32 original differs by that rounding); 16 units of a 16-bit merge dtype (the
# merged model then computes in it). Set from measured honest and broken merges of every built-in
# (``benchmarks/merge_gate.py``; figures in BENCHMARKS.md, "Issue 27").
FLOAT32_TOLERANCE = 1e-3
MERGE_DTYPE_EPS_UNITS = 16
def base_dtype(model: Any) -> str:
    """The least precise float dtype the adapter's layers hold their base weights in (a LoRA on a
    bf16-loaded base: bfloat16; packed integer codes do not count, their float scales do, and for DoRA
    the dtype they dequantize to; float32 when there is none). Call it before ``computing_in`` upcasts them."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    dtypes = {torch.float32}
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            for tensor in [*base.parameters(recurse=False), *base.buffers(recurse=False)]:
                if tensor.is_floating_point():
                    dtypes.add(tensor.dtype)
                # DoRA: PEFT computes the weight norm from a packed weight dequantized to the dtype it
                # says (bitsandbytes' quant_state.dtype), where the plain LoRA forward is exact
                unpacked = getattr(getattr(tensor, "quant_state", None), "dtype", None)
                if getattr(module, "lora_magnitude_vector", None) and isinstance(unpacked, torch.dtype) \
                        and unpacked.is_floating_point:
                    dtypes.add(unpacked)
    least = max(dtypes, key=lambda dtype: torch.finfo(dtype).eps)
    return str(least).removeprefix("torch.")


def merge_tolerance(base: str, merge_dtype: str) -> float:
    """The largest merge error allowed, as a share of the adapter's effect, for a base held in ``base``
    and merged in ``merge_dtype`` (see ``FLOAT32_TOLERANCE``)."""
    import torch

    held, merged = torch_dtype(base), torch_dtype(merge_dtype)
    merge_rounding = MERGE_DTYPE_EPS_UNITS * torch.finfo(merged).eps if merged.itemsize < 4 else 0.0
    return max(FLOAT32_TOLERANCE, torch.finfo(held).eps, merge_rounding)


def check_fidelity(agreement: dict[str, float], minimum: float, method: str, described: str, *,
                   tolerance: float | None = None, candidate: str = "the merged model",
                   outcome: str = "adapter/ is kept and merged/ not written") -> None:
    """Fail loudly when ``candidate`` (built from ``described``) is not the trained adapter model: its
    top-1 predictions agree on fewer than ``minimum`` of the probe positions (NaN-aware: see
    ``logit_agreement``), or, with ``tolerance`` given and ``agreement`` holding ``adapter_effect`` and
    ``max_abs_logit``, its logits differ by more than ``tolerance`` × the larger of the adapter's effect
    and the reference's largest |logit|."""
    top1 = agreement["top1_agreement"]
    error = agreement["max_abs_logit_diff"]
    from kbit.core.model.bases import ORIGINAL_OF_QUANTIZED

    if ORIGINAL_OF_QUANTIZED in described:
        fix = (f"method '{method}' merges into the unquantized base, but its adapter trained on the quantized one: its "
               "merge_policy should name base='dequantized' (see docs/plugins.md)")
    else:
        fix = (f"If method '{method}' quantizes its base, it must do so in build_quant_config or quantize_base, and its "
               "dequantize_base must return exactly the weights it trained on (see docs/plugins.md)")
    keep = f"{outcome}. {fix}"
    if top1 < minimum:
        raise MergeCheckFailed(
            f"merge check failed: {candidate}, from {described}, agrees with the trained adapter model on {100 * top1:.1f}% "
            f"of top-1 predictions (max |Δlogit| {error:.3g}; required {100 * minimum:g}%), so it is not the model "
            f"that was trained; {keep}; --merge-min-agreement 0 keeps such a merge anyway"
        )
    if tolerance is None or "adapter_effect" not in agreement:
        return
    scale = max(agreement["adapter_effect"], agreement["max_abs_logit"])
    if error <= tolerance * scale:
        return
    raise MergeCheckFailed(
        f"merge check failed: {candidate}, from {described}, differs from the trained adapter model by up to {error:.3g} "
        f"in its logits, {error / scale:.2%} of their scale ({scale:.3g}: the larger of the adapter's own effect and the "
        f"largest logit; allowed {tolerance:.2%}), although top-1 agrees on {100 * top1:.1f}%, so it is not the model "
        f"that was trained; {keep}; --merge-tolerance sets the allowed share"
    )


def probe_batches(tokenizer: Any, examples: list[Any], max_length: int, count: int = 16) -> list[dict[str, Any]]:
    """The merge check's probe: the first ``count`` of ``examples`` as the model saw them in training
    (chat prompt + completion, cut to ``max_length`` tokens as training cuts), one right-padded batch;
    none without examples."""
    from kbit.core.measure.budget import cut_for_tokens
    from kbit.core.measure.generation import render_prompt

    texts = [cut_for_tokens(render_prompt(tokenizer, example) + example.completion, max_length)
             for example in examples[:count]]
    if not texts:
        return []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        return [dict(tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                               add_special_tokens=False))]
    finally:
        tokenizer.padding_side = side


def logit_agreement(reference: Any, candidate: Any, batches: list[dict[str, Any]]) -> dict[str, float]:
    """Max/mean absolute logit difference and top-1 agreement of ``candidate`` against ``reference``.

    NaN-aware: a position where either model's logits are not finite counts as a disagreement with
    an infinite difference (NaN compares unequal to everything, so a plain max or argmax would
    report a broken model as a perfect match).
    """
    import torch

    from kbit.core.system.device import cpu_logits

    max_err, total_err, count, agree, positions, largest = 0.0, 0.0, 0, 0, 0, 0.0
    reference.eval()
    candidate.eval()
    with torch.no_grad():
        for batch in batches:
            ref, cand = cpu_logits(reference, batch), cpu_logits(candidate, batch)
            mask = batch["attention_mask"].bool().cpu()
            finite = (torch.isfinite(ref).all(-1) & torch.isfinite(cand).all(-1))[mask]
            diff = (ref - cand).abs()[mask]
            if not bool(finite.all()):
                max_err = math.inf
            good = diff[finite]
            if bool(finite.any()):
                largest = max(largest, float(ref[mask][finite].abs().max()))
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
        "max_abs_logit": largest,
    }


def adapter_effect(model: Any, batches: list[dict[str, Any]]) -> float:
    """The largest change the adapter makes to ``model``'s logits (max |Δlogit| against the same PEFT model
    with its adapter switched off) over the batches' attended positions: the scale a merge's error is
    judged against. Infinite where either pass is not finite."""
    import torch

    from kbit.core.system.device import cpu_logits

    largest = 0.0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            on = cpu_logits(model, batch)
            with model.disable_adapter():
                off = cpu_logits(model, batch)
            diff = (on - off).abs()[batch["attention_mask"].bool().cpu()]
            if not bool(torch.isfinite(diff).all()):
                return math.inf
            if diff.numel():
                largest = max(largest, float(diff.max()))
    return largest


def save_model(model: Any, tokenizer: Any, target: Path) -> list[str]:
    """Save ``model`` (safetensors) and ``tokenizer`` to ``target`` atomically; returns the names written there."""
    with atomic_directory(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        return sorted(os.listdir(staging))
