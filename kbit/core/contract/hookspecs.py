"""The quantization-method contract: the hooks a method plugin implements.

A plugin is a module whose functions are marked with ``@kbit.hookimpl`` and named after these
specs. It is registered under its method name in the ``kbit.methods`` entry-point group. kbit calls
each hook on the selected method's plugin only, so a hook never needs to check which method is meant.

Required: ``describe_method``, ``resolve_spec``, ``build_quant_config``, ``prepare_model``,
``merge_policy``. Optional: ``resolve_for_model`` (check the spec against the model before anything
is written), ``quantize_base`` and ``dequantize_base`` (a quantized base that is not a transformers
quantization config, or one that transformers cannot dequantize exactly), ``prepare_inference`` (fast generation after training) and ``quantize_model``
(post-training quantization methods).

The order kbit calls them in a run: ``describe_method`` → ``resolve_spec`` → ``resolve_for_model`` →
``build_quant_config`` → load → ``quantize_base`` → ``prepare_model`` → attach and train the adapter
→ ``merge_policy`` → merge (loading the base again, then ``dequantize_base``) → ``quantize_model`` →
``prepare_inference``. Everything a hook needs is importable from ``kbit.plugin``.
Hooks must not import torch at module import time; import heavy packages inside the hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from kbit.core.system.device import DeviceInfo
    from kbit.core.contract.method_info import MergePolicy, MethodInfo
    from kbit.core.contract.spec import QuantizationSpec

PROJECT = "kbit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

REQUIRED_HOOKS = ("describe_method", "resolve_spec", "build_quant_config", "prepare_model", "merge_policy")


@hookspec(firstresult=True)
def describe_method() -> MethodInfo:
    """Describe the method: summary, options with defaults, aliases, requirements, capabilities.

    Must be cheap and must not import torch: ``kbit methods`` calls it for every plugin.
    :return: a ``kbit.plugin.MethodInfo``.
    """


@hookspec(firstresult=True)
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    """Turn user option overrides into the method's full ``QuantizationSpec``.

    :param options: user overrides by name, as strings (``-o r=16``) or typed values (YAML); apply
        them on top of the method's defaults, e.g. with ``MethodInfo.options.resolve``.
    :param device: where training will run; resolve "auto" settings (compute dtype) against it.
        ``kbit methods`` calls this hook with no options and a CPU device to check its return type:
        keep it cheap and free of torch imports.
    :return: a ``kbit.plugin.QuantizationSpec`` whose ``method`` is the canonical method name, with
        ``adapter`` (``kbit.plugin.adapter_settings``) and ``training``
        (``kbit.plugin.training_settings``) set for an adapter method, ``calibration`` for one that
        quantizes after training, and the method's private settings in ``extras``.
        Raise ``kbit.ConfigError`` naming the option for an unknown or invalid option, or for an
        unsupported combination (e.g. an adapter type the method cannot train).
    """


@hookspec(firstresult=True)
def resolve_for_model(spec: QuantizationSpec, model_config: Any) -> QuantizationSpec | None:
    """Optional: check ``spec`` against the model before anything is loaded or written.

    :param model_config: the base model's ``transformers.PretrainedConfig`` (widths, layers,
        architecture); no weights are loaded.
    :return: the spec to run with, with settings that depend on the model settled (e.g. a group
        size chosen to divide every layer width), or ``None`` to keep ``spec``. Raise
        ``kbit.ConfigError`` with the fix for a model the method cannot handle (a width the group
        size does not divide, an unsupported architecture).
    """


@hookspec(firstresult=True)
def build_quant_config(spec: QuantizationSpec) -> Any | None:
    """The ``transformers`` quantization config to load the base model with.

    :return: a ``transformers.utils.quantization_config.QuantizationConfigMixin`` (for example
        ``BitsAndBytesConfig``), or ``None`` when the base trains unquantized (methods that quantize
        after training, or none at all).
    """


@hookspec(firstresult=True)
def quantize_base(model: Any, spec: QuantizationSpec) -> Any:
    """Optional: quantize a freshly loaded full-precision base in the method's own way.

    For methods whose quantized base is not a transformers quantization config (then
    ``build_quant_config`` returns None). kbit calls it wherever the base is loaded — for training,
    for evaluating the adapter, and again before a merge into the dequantized base — so it must be
    deterministic: the same full-precision weights must give the same quantized weights.
    Replace each quantized ``torch.nn.Linear`` with a ``kbit.plugin.QuantizedLinear`` subclass so
    PEFT can attach adapters to it and kbit can measure its storage.
    :return: the quantized model (the same object or a new one).
    """


@hookspec(firstresult=True)
def dequantize_base(model: Any, spec: QuantizationSpec) -> Any:
    """Optional: turn the quantized base (loaded through ``build_quant_config``, then
    ``quantize_base``) back into plain ``torch.nn.Linear`` layers holding exactly the weights the
    adapter was trained against, in ``spec.training.merge_dtype`` (``kbit.plugin.dequantize_linears``
    does it for ``QuantizedLinear`` layers).

    Required for a merge into the dequantized base when ``quantize_base`` is implemented, and for a
    quantization config transformers cannot dequantize (torchao, quanto: use the backend's own
    ``dequantize()``); without it kbit refuses such a merge before training rather than merge into
    other weights. A method with a transformers quantization config also implements it where
    transformers' ``dequantize()`` rounds the weights (bitsandbytes dequantizes 4-bit weights in the
    dtype they were loaded in, e.g. bf16, while the trained model's float32 forward uses the exact values); otherwise kbit calls
    ``dequantize(dtype=merge_dtype)``.
    :return: the full-precision model to merge the adapter into.
    """


@hookspec(firstresult=True)
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    """Make a freshly loaded (and, if the method does so, ``quantize_base``-quantized) base ready for
    adapters to be attached and trained.

    Do not change base weights here: a merge reloads the base and would not see the change (kbit's
    merge check then fails the run). Quantize in ``build_quant_config`` or ``quantize_base``.
    :param model: the ``PreTrainedModel`` loaded with ``build_quant_config(spec)``.
    :return: the model to attach adapters to (the same object or a new one). After kbit attaches
        the adapter described by ``spec.adapter``, only adapter parameters may be trainable. For
        k-bit bases this is ``kbit.plugin.prepare_for_adapter(model, spec, kbit_base=True)``.
    """


@hookspec(firstresult=True)
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    """Say what happens to the adapter after training.

    :return: a ``kbit.plugin.MergePolicy``: merge (into which base, in which dtype), keep the adapter
        only, or refuse, with the reason. kbit's merge step carries it out: "dequantized" loads the
        base as for training and dequantizes it (``dequantize_base``, or transformers'
        ``dequantize()`` for a quantization config), "original" loads the unquantized base. kbit then
        checks the merged model against the trained adapter model and fails the run when they
        disagree (``kbit.plugin.merge_or_keep`` builds the usual policy).
    """


@hookspec(firstresult=True)
def prepare_inference(model: Any, spec: QuantizationSpec) -> Any:
    """Optional: switch a trained (or loaded) model to the backend's fastest inference path.

    Called after training and after the merge has been checked, before generation-heavy
    evaluation; the model is not trained again. Use it to undo training-only settings of
    ``prepare_model`` (e.g. re-enable inference weight repacking).
    :return: the model to generate with.
    """


@hookspec(firstresult=True)
def quantize_model(model_dir: Path, spec: QuantizationSpec, calibration: list[str], output_dir: Path) -> None:
    """Post-training quantization (optional hook): quantize a full-precision model directory.

    :param model_dir: a Hugging Face model directory (typically the merged model of a run).
    :param calibration: calibration texts (already formatted with the chat template), the first
        ``spec.calibration.samples`` training examples; empty when ``MethodInfo.needs_calibration``
        is false.
    :param output_dir: an empty directory to save the quantized model and its tokenizer into, in a
        format ``AutoModelForCausalLM.from_pretrained`` loads.
    :return: None. Raise ``kbit.ConfigError`` for settings that do not fit the model.
    """
