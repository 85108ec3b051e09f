"""quanto-int4: optimum-quanto int4 weight-only base with a LoRA/DoRA adapter (see kbit_quanto.hooks)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit import MergePolicy, MethodInfo, QuantizationSpec, hookimpl
from kbit.core.device import DeviceInfo
from kbit_quanto import hooks

NAME = "quanto-int4"
OPTIONS = hooks.options(merge=False)


@hookimpl
def describe_method() -> MethodInfo:
    return hooks.describe("int4", OPTIONS)


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    return hooks.resolve(NAME, "int4", OPTIONS, options, device)


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> Any:
    return hooks.quant_config(spec)


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    return hooks.prepare(model, spec)


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    return hooks.policy(spec)
