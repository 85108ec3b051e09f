"""The public API for method plugins: everything a method needs, in one module.

    from kbit.plugin import hookimpl, MethodInfo, QuantizationSpec, adapter_options, ...

A built-in method imports nothing else from kbit, so a third-party method written from this module
and ``docs/plugins.md`` is exactly as capable as a built-in one. Importing it never imports torch;
``QuantizedLinear``, ``replace_linears`` and ``dequantize_linears`` (which do) load on first use —
use them inside hooks.

- Hook marker and records: ``hookimpl``, ``MethodInfo``, ``Requirement``, ``MergePolicy``,
  ``QuantizationSpec`` with its typed ``AdapterSettings``, ``TrainingSettings``, ``CalibrationSettings``.
- Options: ``Option``, ``OptionSchema`` and the parsers ``integer``, ``number``, ``choice``,
  ``boolean``, ``dtype``, ``module_names`` (``described`` marks a method's own parser with what it
  accepts, for ``kbit spec NAME --options``); the shared schemas ``adapter_options``,
  ``training_options``, ``calibration_options`` and the matching ``adapter_settings``,
  ``training_settings``, ``calibration_settings``.
- Device and dtypes: ``DeviceInfo``, ``resolve_compute_dtype``, ``torch_dtype``.
- Model helpers: ``prepare_for_adapter`` (freeze, k-bit preparation, gradient checkpointing),
  ``merge_or_keep`` (the usual merge policy), ``QuantizedLinear``, ``replace_linears``,
  ``dequantize_linears`` (a base quantized in ``quantize_base``), ``cache_dequantized`` (its
  ``prepare_inference``: generation multiplies by kept dequantized weights).
- Runtime rounding: ``activation_format`` (the format llama.cpp's CPU matmul rounds a weight type's
  input to, ``"q4_1"`` → ``"q8_1"``), passed to ``QuantizedLinear(linear, activations=...)``;
  ``fake_quantize_activations`` (that rounding with a straight-through gradient); ``exact_activations``
  (a context in which a model's ``QuantizedLinear`` layers skip that rounding, as a merged float model
  does). Imports torch.
- GGUF Q4_1 blocks, bit for bit as llama.cpp/gguf write them: ``q4_1_codes`` (round-to-nearest
  codes of a weight), ``pack_q4_1``/``unpack_q4_1`` (the 20-byte blocks), ``dequantize_q4_1``.
- A GGUF file's own weights: ``gguf_source`` (the file a loaded base was converted from),
  ``gguf_linear_weights`` (each linear layer's blocks as stored, a ``PackedTensor``, in the model's row
  order), ``dequantize_gguf`` (raw blocks of any type gguf-py reads to float32, in torch, bit for bit as
  gguf-py), ``GGUF_MODEL_TYPES`` (the architectures whose layers are found in a file).
- Errors: ``ConfigError`` (bad option or model: one line with the fix), ``MissingDependencyError``,
  ``PluginError``, ``KbitError``.
"""

from kbit.core.model.adapters import (
    adapter_options,
    adapter_settings,
    calibration_options,
    calibration_settings,
    merge_or_keep,
    prepare_for_adapter,
    training_options,
    training_settings,
)
from kbit.core.system.device import DeviceInfo, resolve_compute_dtype, torch_dtype
from kbit.core.errors import ConfigError, KbitError, MissingDependencyError, PluginError
from kbit.core.export.blocks import Q4_1_BLOCK, PackedTensor, dequantize_q4_1, pack_q4_1, q4_1_codes, unpack_q4_1
from kbit.core.model.gguf_tensors import GGUF_MODEL_TYPES, dequantize_gguf, gguf_linear_weights, gguf_source
from kbit.core.contract.hookspecs import hookimpl
from kbit.core.contract.method_info import MergePolicy, MethodInfo, Requirement
from kbit.core.contract.options import DTYPES, Option, OptionSchema, boolean, choice, described, dtype, integer, module_names, number
from kbit.core.contract.spec import AdapterSettings, CalibrationSettings, QuantizationSpec, TrainingSettings

_NEEDS_TORCH = ("QuantizedLinear", "replace_linears", "dequantize_linears", "exact_activations", "cache_dequantized",
               "dequantized_copy_fits")
_ROUNDING = ("activation_format", "fake_quantize_activations")  # kbit.core.runtime.rounding, imports torch

__all__ = [
    "DTYPES", "AdapterSettings", "CalibrationSettings", "ConfigError", "DeviceInfo", "KbitError", "MergePolicy",
    "MethodInfo", "MissingDependencyError", "Option", "OptionSchema", "PluginError", "Q4_1_BLOCK", "QuantizationSpec",
    "Requirement", "TrainingSettings", "adapter_options", "adapter_settings", "boolean", "calibration_options",
    "calibration_settings", "choice", "dequantize_q4_1", "described", "dtype", "hookimpl", "integer", "merge_or_keep",
    "module_names", "number", "pack_q4_1", "q4_1_codes", "unpack_q4_1",
    "GGUF_MODEL_TYPES", "PackedTensor", "dequantize_gguf", "gguf_linear_weights", "gguf_source",
    "prepare_for_adapter", "resolve_compute_dtype", "torch_dtype", "training_options", "training_settings",
    *_NEEDS_TORCH, *_ROUNDING,
]


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        from kbit.core.model import quantized_linear

        return getattr(quantized_linear, name)
    if name in _ROUNDING:
        from kbit.core.runtime import rounding

        return getattr(rounding, name)
    raise AttributeError(f"module 'kbit.plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, the ones loaded on first use (``_NEEDS_TORCH``, ``_ROUNDING``) included."""
    return sorted({*globals(), *__all__})
