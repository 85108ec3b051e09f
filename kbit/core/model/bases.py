"""A method's base model, loaded the same way wherever kbit needs it.

- ``load_base``: for training and for evaluating an adapter: the weights through the method's
  ``build_quant_config``, then its ``quantize_base`` (computed once: ``kbit.core.model.quantized_cache``).
- ``load_merge_base``: the full-precision weights a ``MergePolicy`` names, with a description of
  what they really are. "dequantized" is the training base dequantized (by the method's
  ``dequantize_base`` where it has one, else by transformers for a quantization config); "original" is the unquantized
  base. When the policy's base cannot be produced, it is refused — never replaced by other weights.
- ``check_mergeable``: the refusals that can be known before training.
- ``prepare_for_training``: the method's ``prepare_model``, refusing a base the method left entirely
  unquantized and a merge when it changed base weights (a merge reloads the base and would never see
  the change).
"""

from __future__ import annotations

import math
from typing import Any

from kbit.core.system.device import torch_dtype
from kbit.core.errors import ConfigError
from kbit.core.methods.method import Method
from kbit.core.contract.method_info import MergePolicy
from kbit.core.model.sources import load_causal_lm
from kbit.core.model.quantized_cache import load_quantized_base
from kbit.core.model.resident_memory import release_load_memory
from kbit.core.contract.spec import QuantizationSpec


class MergeRefused(ConfigError):
    """The merge the policy asks for cannot be carried out faithfully; nothing was merged."""


def load_base(method: Method, spec: QuantizationSpec, path: str, *, trust_remote_code: bool = False,
              device_map: Any = None) -> Any:
    """The base exactly as the adapter trains on it: loaded through the quant config, then ``quantize_base``
    (or its layers from the quantized-base cache, ``kbit.core.model.quantized_cache``; after which the
    checkpoint's memory map holds weights that were replaced, and is let go of)."""
    def load() -> Any:
        return load_causal_lm(path, quant_config=method.build_quant_config(spec), dtype=spec.training.compute_dtype,
                              trust_remote_code=trust_remote_code, device_map=device_map)

    if not method.implements("quantize_base"):
        return load()  # load_causal_lm has already given back what loading left
    model = load_quantized_base(method, spec, path, load)
    release_load_memory(model)
    return model


def check_mergeable(method: Method, spec: QuantizationSpec, policy: MergePolicy) -> None:
    """Refuse, before any training, a merge into the dequantized base that no hook can produce."""
    if policy.action != "merge" or policy.base != "dequantized":
        return
    if method.implements("quantize_base") and not method.implements("dequantize_base"):
        raise MergeRefused(
            f"method '{method.name}' quantizes its base in quantize_base but has no dequantize_base hook, so kbit cannot "
            "merge into the weights the adapter trains on; add dequantize_base, or return keep_adapter from merge_policy "
            "(a merge into the unquantized base would fail the merge check: the adapter trained on the quantized one)"
        )
    config = method.build_quant_config(spec)
    if config is not None and not method.implements("dequantize_base") and not transformers_can_dequantize(config):
        raise MergeRefused(
            f"method '{method.name}' asks for a merge into the dequantized base, but transformers cannot dequantize "
            f"{type(config).__name__} models; add dequantize_base, or return keep_adapter from merge_policy (a merge into "
            "the unquantized base would fail the merge check: the adapter trained on the quantized one)"
        )


def transformers_can_dequantize(quant_config: Any) -> bool:
    """Whether transformers' quantizer for ``quant_config`` implements ``dequantize()``."""
    from transformers.quantizers import AutoHfQuantizer
    from transformers.quantizers.base import HfQuantizer

    quantizer = AutoHfQuantizer.from_config(quant_config)
    return type(quantizer)._dequantize is not HfQuantizer._dequantize


ORIGINAL_OF_QUANTIZED = "the original base (unquantized weights, as loaded)"  # base="original" of a quantizing method


def load_merge_base(method: Method, spec: QuantizationSpec, policy: MergePolicy, path: str, *,
                    trust_remote_code: bool = False) -> tuple[Any, str]:
    """The full-precision model to merge into, in ``policy.dtype``, and what it is (recorded and printed)."""
    check_mergeable(method, spec, policy)
    quant_config = method.build_quant_config(spec)
    quantized = quant_config is not None or method.implements("quantize_base")
    if policy.base == "original" or not quantized:
        model = load_causal_lm(path, dtype=policy.dtype, trust_remote_code=trust_remote_code)
        described = (ORIGINAL_OF_QUANTIZED if quantized else
                     f"the base as loaded (method '{method.name}' quantizes nothing before training)")
    elif method.implements("dequantize_base"):
        model = method.dequantize_base(load_base(method, spec, path, trust_remote_code=trust_remote_code), spec)
        quantized_by = "quantize_base" if method.implements("quantize_base") else type(quant_config).__name__
        described = f"the dequantized base (method '{method.name}': {quantized_by}, then dequantize_base)"
    else:
        model = load_base(method, spec, path, trust_remote_code=trust_remote_code)
        model = model.dequantize(dtype=torch_dtype(policy.dtype))
        described = f"the dequantized base (transformers' dequantize() of the {type(quant_config).__name__} weights)"
    return model.to(torch_dtype(policy.dtype)), described


def restore_conv1d(model: Any, *, trust_remote_code: bool = False) -> int:
    """Turn back into transformers' ``Conv1D`` every plain ``Linear`` of ``model`` that its architecture
    declares as one (GPT-2 and its kin); returns how many.

    Quantizing loads swap a ``Conv1D`` (weight stored ``(in, out)``) for a linear layer on the transposed
    weight (transformers' bitsandbytes integration does), and dequantizing returns a plain ``Linear``
    (``(out, in)``): a merged model saved like that no longer loads as its own architecture. The same
    product either way (``x @ W.T + b`` is Conv1D's ``x @ Wᵀ + b`` on the stored transpose).
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    from kbit.core.model.check import skeleton

    declared = {name for name, module in skeleton(model.config, trust_remote_code).named_modules()
                if isinstance(module, Conv1D)}
    restored = 0
    for name, module in list(model.named_modules()):
        if name in declared and type(module) is torch.nn.Linear:
            conv = Conv1D(module.out_features, module.in_features)
            with torch.no_grad():
                conv.weight = torch.nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=False)
                bias = module.bias if module.bias is not None else torch.zeros_like(conv.bias, dtype=module.weight.dtype)
                conv.bias = torch.nn.Parameter(bias.detach().to(module.weight.device), requires_grad=False)
            model.set_submodule(name, conv)
            restored += 1
    return restored


def check_loftq(method: Method, spec: QuantizationSpec) -> None:
    """Refuse ``-o init=loftq`` (before anything is loaded or written) where the adapter trains on unquantized
    weights: there is no quantization error for it to start by cancelling."""
    if spec.adapter is None or spec.adapter.init != "loftq":
        return
    if method.build_quant_config(spec) is None and not method.implements("quantize_base"):
        raise ConfigError(f"-o init=loftq: method '{method.name}' trains on the unquantized weights, so there is no "
                          "quantization error for the adapter to cancel; drop -o init or choose a method that quantizes "
                          "its base")


def prepare_for_training(method: Method, spec: QuantizationSpec, policy: MergePolicy, model: Any) -> Any:
    """``method.prepare_model(model, spec)``; refuses, before training, a base nothing quantized
    (``check_quantized``) and a merge it would make wrong.

    ``prepare_model`` may freeze, upcast or wrap, but not change base weights — parameters, nor the
    buffers a quantized layer keeps its codes and scales in: the merge reloads the base through
    ``build_quant_config``/``quantize_base`` and would merge into other weights than the adapter
    trained on.
    """
    check_quantized(method, spec, model)
    before = weights_fingerprint(model)
    prepared = method.prepare_model(model, spec)
    if policy.action == "merge":
        after = weights_fingerprint(prepared)
        changed = sorted(name for name in before.keys() & after.keys() if not _same_sum(before[name], after[name]))
        if changed:
            raise MergeRefused(
                f"method '{method.name}' changed base weights in prepare_model ({changed[0]}"
                f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}), so no merge could use the weights the "
                "adapter trains on; quantize in build_quant_config or quantize_base (see docs/plugins.md), or return "
                "keep_adapter from merge_policy"
            )
    return prepared


def check_quantized(method: Method, spec: QuantizationSpec, model: Any) -> None:
    """Refuse, before training, a method that quantizes its base but left every base linear layer of this
    model in float: its backend does not handle the architecture's layers (torchao's int8 config skips
    GPT-2's ``Conv1D``), and the run would train a float model under a quantized method's name."""
    from kbit.core.measure.metrics import base_linears, float_linears

    if method.build_quant_config(spec) is None and not method.implements("quantize_base"):
        return
    floats, layers = float_linears(model)
    if layers and floats == layers:
        kinds = sorted({type(module).__name__ for module in base_linears(model)})
        author = "" if method.distribution == "kbit" else (
            f" (the method's author: {method.distribution}'s {'quantize_base' if method.implements('quantize_base') else 'build_quant_config'} "
            "left every layer float; a quantize_base replaces them, e.g. with kbit.plugin.replace_linears)")
        raise ConfigError(f"method '{method.name}' quantized none of this model's {layers} linear layers (they stay "
                          f"float {'/'.join(kinds)}: its backend does not handle this architecture's layers); choose "
                          f"another method, e.g. qlora, or lora to train on the float base{author}")


def _same_sum(a: float, b: float) -> bool:
    """Equal sums; NaN equals NaN here: packed 4-bit codes stored in a float dtype (qlora's
    ``quant_storage=bfloat16`` for FSDP) read as floats and often sum to NaN, unchanged."""
    return a == b or (math.isnan(a) and math.isnan(b))


def weights_fingerprint(model: Any) -> dict[str, float]:
    """A float64 sum per parameter and buffer (integer buffers, e.g. packed codes, in int64): equal for
    equal values whatever the dtype they are stored in.

    Summed a million values at a time: a float64 copy of SmolLM2's embeddings alone is 226 MB, and
    torch's ``sum(dtype=float64)`` makes that copy too.
    """
    import torch

    sums: dict[str, float] = {}
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            try:
                data = tensor.detach().reshape(-1)
                wide = torch.float64 if data.is_floating_point() else torch.int64
                sums[name] = float(sum(float(chunk.to(wide).sum()) for chunk in data.split(1 << 20)))
            except (RuntimeError, TypeError, ValueError, NotImplementedError):
                continue  # a tensor subclass that cannot be cast or summed (quanto's refuses casts): not fingerprinted
    return sums
