"""LoftQ-style adapter initialisation (``-o init=loftq``): the adapter starts by cancelling part of the
base's quantization error instead of as a no-op (Li et al. 2023, "LoftQ").

For each adapted layer, with ``W`` the original weight and ``Q`` the weight the layer trains against
(the method's dequantized base: ``dequantize_base``, or transformers' ``dequantize()``), the adapter's
update ``ΔW = s·B·A`` (``s = lora_alpha / r``) is set to the best rank-``r`` approximation (SVD) of the
error ``W - Q``, so the layer computes ``Q + ΔW ≈ W`` from step 0. A QA-LoRA adapter
(``qa_group_size``) can only add a constant per block of a row, so there the error's block means are
approximated (and its ``A`` is group-constant, as QA-LoRA keeps it). With a fixed ``Q`` one SVD is the
optimum, so LoftQ's alternation (re-quantizing ``W - ΔW``) does not apply: the method's base is what
the method quantizes, and the merge reloads exactly that. A fake-quant adapter (``fake_quant``) is
refused: it computes ``round(W + ΔW)``, and round-to-nearest already picks the grid point nearest to
``W`` (measured: five alternations of rounding and SVD left the weight error where it was).

PEFT has LoftQ too, and kbit does not use it: ``init_lora_weights="loftq"`` quantizes the base itself
(to NF4/int) instead of the method's grid, and ``replace_lora_weights_loftq`` covers bitsandbytes 4-bit
layers only, computes on "cuda" unconditionally, and ignores the LoRA scaling (so with ``lora_alpha !=
r`` it cancels ``s`` times the error, not the error).

Returns the relative error ``||W - layer weight||_F / ||W||_F`` over all adapted layers before and
after, which ``kbit train`` records. Imported lazily (imports torch).
"""

from __future__ import annotations

from typing import Any

import torch

from kbit.core.errors import ConfigError


def initialise_from_bases(model: Any, method: Any, spec: Any, path: str, *, trust_remote_code: bool = False) -> dict[str, float]:
    """:func:`initialise_loftq` with the bases loaded from ``path``: the original in float32 and the base the
    method trains on, dequantized as its merge dequantizes it."""
    from kbit.core.model.bases import load_merge_base
    from kbit.core.contract.method_info import MergePolicy
    from kbit.core.model.sources import load_causal_lm

    original = load_causal_lm(path, dtype="float32", trust_remote_code=trust_remote_code)
    policy = MergePolicy(action="merge", base="dequantized", dtype="float32")
    trained_base, _ = load_merge_base(method, spec, policy, path, trust_remote_code=trust_remote_code)
    return initialise_loftq(model, original, trained_base, spec)


def initialise_loftq(model: Any, original: Any, trained_base: Any, spec: Any) -> dict[str, float]:
    """Set the LoRA ``A``/``B`` of ``model`` (a PEFT model) from the quantization error; returns the errors.

    ``original``: the unquantized base (float). ``trained_base``: the dequantized base the adapter trains
    against, the same architecture. ConfigError when the base carries no quantization error (nothing for
    LoftQ to cancel). A layer without error keeps PEFT's start.
    """
    group = spec.adapter.qa_group_size
    before = after = total = 0.0
    with torch.no_grad():
        for name, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a:
                continue
            inner = name.removeprefix("base_model.model.")
            weight = original.get_submodule(inner).weight.to(torch.float32)
            scale, rank = module.scaling["default"], module.r["default"]
            error = weight - trained_base.get_submodule(inner).weight.to(torch.float32)
            total += float(weight.norm()) ** 2
            if not error.any():
                continue  # nothing to cancel: PEFT's start (B = 0, A random) keeps the adapter trainable
            left, right = _factors(_group_means(error, group) if group else error, rank)
            approximation = left @ right
            before += float(error.norm()) ** 2
            after += float((error - (approximation.repeat_interleave(group, dim=1) if group else approximation)).norm()) ** 2
            b, a = left / scale ** 0.5, right / scale ** 0.5
            if group:
                a = a.repeat_interleave(group, dim=1)
            module.lora_A["default"].weight.copy_(a.to(module.lora_A["default"].weight.dtype))
            module.lora_B["default"].weight.copy_(b.to(module.lora_B["default"].weight.dtype))
    if total == 0.0 or before == 0.0:
        raise ConfigError(f"-o init=loftq: method '{spec.method}' trains on the unquantized weights, so there is no "
                          "quantization error for the adapter to cancel; drop -o init or choose a quantized method")
    return {"relative_error_before": (before / total) ** 0.5, "relative_error_after": (after / total) ** 0.5}


def _factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` with ``L @ R`` the rank-``rank`` approximation of ``matrix`` (randomized SVD: ``torch.svd_lowrank``,
    O(rows·columns·rank) instead of a full SVD's cubic cost), each side holding the square root of the singular values."""
    kept = min(rank, *matrix.shape)  # a matrix narrower than the rank: the other factors stay zero
    u, s, v = torch.svd_lowrank(matrix, q=min(kept + 8, *matrix.shape), niter=4)
    root = s[:kept].sqrt()
    left, right = matrix.new_zeros(matrix.shape[0], rank), matrix.new_zeros(rank, matrix.shape[1])
    left[:, :kept], right[:kept] = u[:, :kept] * root, root[:, None] * v[:, :kept].T
    return left, right


def _group_means(matrix: torch.Tensor, group: int) -> torch.Tensor:
    rows, columns = matrix.shape
    return matrix.reshape(rows, columns // group, group).mean(dim=-1)
