"""The quantization-method contract: the hooks a method plugin implements.

A plugin is a module whose functions are marked with ``@kbit.hookimpl`` and named after these
specs. It is registered under its method name in the ``kbit.methods`` entry-point group. kbit calls
each hook on the selected method's plugin only, so a hook never needs to check which method is meant.

Required: ``describe_method``, ``resolve_spec``, ``build_quant_config``, ``prepare_model``,
``merge_policy``. Optional: ``prepare_inference`` (fast generation after training) and
``quantize_model`` (post-training quantization methods).
Hooks must not import torch at module import time; import heavy packages inside the hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from kbit.core.device import DeviceInfo
    from kbit.core.method_info import MergePolicy, MethodInfo
    from kbit.core.spec import QuantizationSpec

PROJECT = "kbit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

REQUIRED_HOOKS = ("describe_method", "resolve_spec", "build_quant_config", "prepare_model", "merge_policy")


@hookspec(firstresult=True)
def describe_method() -> MethodInfo:
    """Describe the method: summary, options with defaults, aliases, requirements, capabilities.

    Must be cheap and must not import torch: ``kbit methods`` calls it for every plugin.
    :return: a ``kbit.MethodInfo``.
    """


@hookspec(firstresult=True)
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    """Turn user option overrides into the method's full ``QuantizationSpec``.

    :param options: user overrides by name, as strings (``-o r=16``) or typed values (YAML); apply
        them on top of the method's defaults, e.g. with ``MethodInfo.options.resolve``.
    :param device: where training will run; resolve "auto" settings (compute dtype) against it.
    :return: a ``kbit.QuantizationSpec`` whose ``method`` is the canonical method name and whose
        ``extras["adapter"]`` holds the adapter settings (``kbit.core.adapters.adapter_extras``).
        Raise ``kbit.ConfigError`` naming the option for an unknown or invalid option, or for an
        unsupported combination (e.g. an adapter type the method cannot train).
    """


@hookspec(firstresult=True)
def build_quant_config(spec: QuantizationSpec) -> Any | None:
    """The ``transformers`` quantization config to load the base model with.

    :return: a ``transformers.utils.quantization_config.QuantizationConfigMixin`` (for example
        ``BitsAndBytesConfig``), or ``None`` when the base trains unquantized (methods that quantize
        after training, or none at all).
    """


@hookspec(firstresult=True)
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    """Make a freshly loaded base model ready for adapters to be attached and trained.

    :param model: the ``PreTrainedModel`` loaded with ``build_quant_config(spec)``.
    :return: the model to attach adapters to (the same object or a new one). After kbit attaches
        the adapter described by ``spec.extras["adapter"]``, only adapter parameters may be
        trainable. For k-bit bases this is ``peft.prepare_model_for_kbit_training``.
    """


@hookspec(firstresult=True)
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    """Say what happens to the adapter after training.

    :return: a ``kbit.MergePolicy``: merge (into which base, in which dtype), keep the adapter
        only, or refuse, with the reason. kbit's merge step carries it out.
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
    :param calibration: calibration texts (already formatted with the chat template), possibly empty
        when ``MethodInfo.needs_calibration`` is false.
    :param output_dir: an empty directory to save the quantized model and its tokenizer into, in a
        format ``AutoModelForCausalLM.from_pretrained`` loads.
    :return: None. Raise ``kbit.ConfigError`` for settings that do not fit the model.
    """
