"""gguf: LoRA on a GGUF file's own quantized weights — fine-tune the file people run.

- Base: the ``.gguf`` file the model was read from (``--model FILE.gguf``, or the default base,
  SmolLM2's Q4_1 file). Every linear layer but the output head holds that file's blocks as stored (any
  type gguf-py reads: Q4_1, Q8_0, K-quants, IQ ...), dequantized on use: the adapter trains on
  exactly the weights llama.cpp computes with, not on a re-quantization of them. Before the layers are
  replaced, each one's blocks are checked to dequantize to exactly the weights transformers loaded.
- Adapter: plain LoRA, the only kind a llama.cpp LoRA GGUF holds.
- Runtime (``-o runtime=llama.cpp``, the default): each layer trains on its input rounded as llama.cpp's
  CPU matmul rounds it for the layer's weight type (``activation_format``), as qalora does;
  ``-o runtime=exact`` trains on the float input.
- After training: the adapter is written as a llama.cpp LoRA GGUF over the unchanged base file
  (``MergePolicy.adapter_gguf``), and merged into the dequantized base in float32 for the usual
  merged model and its check.

A model not read from a GGUF file is refused in ``resolve_for_model``, before anything is loaded.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from functools import cache
from typing import Any

import attrs

from kbit.plugin import (
    GGUF_MODEL_TYPES,
    ConfigError,
    DeviceInfo,
    MergePolicy,
    MethodInfo,
    Option,
    OptionSchema,
    QuantizationSpec,
    Requirement,
    adapter_options,
    adapter_settings,
    choice,
    gguf_source,
    hookimpl,
    merge_or_keep,
    prepare_for_adapter,
    training_options,
    training_settings,
)

NAME = "gguf"
NOT_A_GGUF = f"method {NAME} trains on a GGUF file's own weights; pass --model FILE.gguf (or the default base)"


def _plain_lora(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text != "lora":
        raise ValueError(f"llama.cpp applies plain LoRA adapters over a GGUF file, not {text}; use lora "
                         "(or method qlora for DoRA/VeRA)")
    return text


OPTIONS = OptionSchema(
    tuple(Option("peft_type", "lora", _plain_lora, "adapter type: lora only (what a llama.cpp LoRA GGUF holds)")
          if option.name == "peft_type" else option
          for option in adapter_options(r=64, lora_alpha=16, lora_dropout=0.05).options)
) + training_options() + OptionSchema((
    Option("runtime", "llama.cpp", choice("exact", "llama.cpp"),
           "llama.cpp: train each layer on its input rounded as llama.cpp's CPU matmul rounds it for the layer's "
           "weight type (Q8_0/Q8_1/Q8_K blocks); exact: on the float input"),
))


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="LoRA on a GGUF file's own quantized blocks (any type gguf reads), saved as a llama.cpp LoRA GGUF "
                "over that unchanged file",
        options=OPTIONS,
        aliases=("gguf-lora",),
        requires=(Requirement("peft", "pip install peft"), Requirement("gguf", "pip install gguf")),
        peft_types=("lora",),
        quantized_training=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    if options.get("compute_dtype", "auto") == "auto":
        # The file's weights are float32 once dequantized; a bf16 compute dtype would round them before
        # the adapter sees them (auto picks bf16 on CPUs with native bf16 too).
        options = {**options, "compute_dtype": "float32"}
    values = OPTIONS.resolve(options, method=NAME)
    if values["merge_dtype"] not in ("auto", "float32"):
        raise ConfigError(f"method {NAME} merges into the file's dequantized weights in float32, which hold them "
                          "exactly; drop -o merge_dtype")
    return QuantizationSpec(
        method=NAME,
        backend="gguf",
        adapter=adapter_settings(values),
        training=training_settings(values, device),
        extras={"runtime": values["runtime"]},
    )


@hookimpl
def resolve_for_model(spec: QuantizationSpec, model_config: Any) -> QuantizationSpec:
    """Refuse a base not read from a GGUF file (or whose file is gone); record the file's weight type."""
    source = gguf_source(model_config)
    if source is None:
        raise ConfigError(NOT_A_GGUF)
    if not source.is_file():
        raise ConfigError(f"method {NAME} trains on {source}, the GGUF file this model was converted from, and it is "
                          "gone; pass --model FILE.gguf with the file")
    model_type = getattr(model_config, "model_type", "")
    if model_type not in GGUF_MODEL_TYPES:
        raise ConfigError(f"method {NAME} finds the layers of {', '.join(GGUF_MODEL_TYPES)} models in a GGUF file, "
                          f"not of '{model_type}'; choose another method (e.g. qlora)")
    kind = _linear_type(str(source))
    return attrs.evolve(spec, weights_bits=_bits_of(kind), backend=f"gguf-{kind.lower()}")


@cache
def _linear_type(path: str) -> str:
    """The GGML type most of the file's block weights are stored in ("Q4_1")."""
    import gguf

    types = Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors
                    if t.name.startswith("blk.") and len(t.shape) == 2)
    return types.most_common(1)[0][0] if types else "F32"


def _bits_of(type_name: str) -> int | None:
    found = re.search(r"\d+", type_name)  # Q4_1 → 4, IQ2_XXS → 2, BF16 → 16, MXFP4 → 4
    bits = int(found.group()) if found else None
    return bits if bits in (1, 2, 3, 4, 5, 6, 8, 16, 32) else None


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> None:
    return None  # the blocks come from the file in quantize_base: transformers has no training format for them


@hookimpl
def quantize_base(model: Any, spec: QuantizationSpec) -> Any:
    import torch

    from kbit.plugin import dequantize_gguf, gguf_linear_weights, replace_linears
    from kbit.plugins._gguf_layers import GGUFLinear

    source = gguf_source(model)
    if source is None:
        raise ConfigError(NOT_A_GGUF)
    packed = gguf_linear_weights(source, model)
    rounded = spec.extras.get("runtime", "exact") == "llama.cpp"
    for name, tensor in packed.items():
        weight = model.get_submodule(name).weight
        blocks = torch.from_numpy(tensor.data).to(weight.device)
        if not torch.equal(dequantize_gguf(blocks, tensor.ggml_type).to(weight.dtype), weight.detach()):
            raise ConfigError(f"layer {name}'s blocks in {source} do not dequantize to the weights transformers loaded "
                              f"from it; method {NAME} cannot train on this file (choose another method, e.g. qlora)")
    replace_linears(model, lambda name, linear: GGUFLinear(linear, torch.from_numpy(packed[name].data),
                                                      packed[name].ggml_type.name, rounded))
    return model


@hookimpl
def dequantize_base(model: Any, spec: QuantizationSpec) -> Any:
    from kbit.plugin import dequantize_linears

    return dequantize_linears(model)


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    return prepare_for_adapter(model, spec, kbit_base=False)


@hookimpl
def prepare_inference(model: Any, spec: QuantizationSpec) -> Any:
    from kbit.plugin import cache_dequantized

    return cache_dequantized(model)  # scoring generates token by token: dequantize each layer once, not per token


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    policy = merge_or_keep(spec, base="dequantized", dtype="float32",
                           reason="the adapter trained on the file's blocks, dequantized exactly in float32")
    return attrs.evolve(policy, adapter_gguf=True)
