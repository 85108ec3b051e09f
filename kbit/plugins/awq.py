"""awq: train an adapter on the full-precision base, merge it, then quantize the merged model with AWQ.

AWQ (Lin et al. 2023) scales salient weight channels, chosen from calibration activations, before
rounding, so the channels that matter most lose least. llm-compressor's ``oneshot`` with an
``AWQModifier`` followed by a rounding modifier does it and saves a compressed-tensors checkpoint
(W4A16 asymmetric by default).

Rounding (``-o rounding``): by default the AWQ-scaled weights are rounded by GPTQ, llm-compressor's
stacked ``[AWQModifier, GPTQModifier]`` recipe; ``rounding=rtn`` rounds to nearest as the AWQ paper
does. Why not round to nearest by default, measured on benchmarks item 5's merged model (SmolLM2-135M
after a short arithmetic fine-tune, held-out completion loss 0.334, 32 calibration texts, W4 g64
asymmetric; BENCHMARKS.md has the table and the script): AWQ + round-to-nearest 0.730, plain
round-to-nearest without AWQ 0.608, AWQ + GPTQ 0.334. The smoothing itself is exact (the smoothed,
unquantized model scores 0.334: nothing is folded into the tied embeddings or a shared weight), and
each block's output error on the calibration text drops by ~40%, yet no AWQ setting tried (duo
scaling, single mappings, statistics from completion tokens only) came within 0.2 nats: the
fine-tune's update is ~0.5% of a 4-bit step per weight, so any round-to-nearest grid erases or
scrambles it unless the rounding error is compensated as GPTQ does.

llm-compressor 0.14's AWQ pins its activation cache in page-locked memory unconditionally
(``IntermediatesCache.pin_memory``), which raises "Cannot access accelerator device when none is
available" on a CPU-only torch. Pinning only speeds host-to-GPU copies, so while AWQ runs without an
accelerator, ``unpinned_cache_without_accelerator`` makes exactly that method a no-op.
tests/plugins/test_awq_contract.py fails once upstream stops raising, so the workaround can be removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kbit.plugin import DeviceInfo, MethodInfo, Option, QuantizationSpec, boolean, choice, hookimpl
from kbit.plugins._ptq import GPTQ_DAMPENING, PEFT_TYPES, REQUIRES, ptq_options, ptq_spec, quantize_with
from kbit.plugins._ptq import build_quant_config, merge_policy, prepare_model, resolve_for_model  # noqa: F401  (shared hooks)

NAME = "awq"
OPTIONS = ptq_options(
    symmetric=False,
    extra=(
        Option("duo_scaling", True, boolean, "search scales from both activations and weights (AWQ default)"),
        Option("rounding", "gptq", choice("gptq", "rtn"),
               "rounding of the AWQ-scaled weights: gptq (error-compensating) or rtn (round to nearest, as in the "
               "AWQ paper; loses most of a small fine-tune, see BENCHMARKS.md item 5)"),
    ),
)


@contextlib.contextmanager
def unpinned_cache_without_accelerator() -> Iterator[None]:
    """Make ``IntermediatesCache.pin_memory`` a no-op while no accelerator is available; else nothing."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="adapter on the full-precision base, merged, then AWQ post-training quantization (llm-compressor)",
        options=OPTIONS,
        requires=REQUIRES,
        peft_types=PEFT_TYPES,
        post_training_quantization=True,
        needs_calibration=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    return ptq_spec(NAME, OPTIONS, options, device, extra_keys=("duo_scaling", "rounding"))


def recipe(spec: QuantizationSpec, **quantization: Any) -> list[Any]:
    """The oneshot recipe: AWQ's scale search, then the rounding ``spec.extras["rounding"]`` names.

    ``quantization`` (``config_groups``, ``ignore``) configures the rounding modifier; AWQ searches
    its scales against that modifier's weight scheme.
    """
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    smoothing = AWQModifier(duo_scaling=spec.extras["duo_scaling"])
    # A spec recorded before the option existed was quantized with round-to-nearest.
    if spec.extras.get("rounding", "rtn") == "gptq":
        return [smoothing, GPTQModifier(dampening_frac=GPTQ_DAMPENING, **quantization)]
    return [smoothing, QuantizationModifier(**quantization)]


@hookimpl
def quantize_model(model_dir: Path, spec: QuantizationSpec, calibration: list[str], output_dir: Path) -> None:
    quantize_with(lambda **quantization: recipe(spec, **quantization), model_dir, spec, calibration, output_dir,
                  context=unpinned_cache_without_accelerator)
