"""Records a plugin returns to describe itself and its merge behaviour.

Both are plain data: building them never imports torch, so listing methods stays fast.
"""

from __future__ import annotations

import importlib.util

import attrs

from kbit.core.contract.options import OptionSchema, describe_parser

PEFT_TYPES = ("lora", "dora", "vera")


@attrs.frozen
class Requirement:
    """A package a method needs: checked by import name, installed by ``install``."""

    module: str
    install: str

    def is_met(self) -> bool:
        """True when the module can be imported (checked without importing it)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


def describe_missing(missing: list[Requirement]) -> str:
    """``needs a, b: <install line>`` for each install line, in order; modules sharing a line share it."""
    by_line: dict[str, list[str]] = {}
    for requirement in missing:
        by_line.setdefault(requirement.install, []).append(requirement.module)
    return "; ".join(f"needs {', '.join(modules)}: {line}" for line, modules in by_line.items())


def check_peft_types(value: tuple[str, ...]) -> None:
    """ValueError for an adapter type kbit cannot attach (it attaches PEFT's LoRA, DoRA and VeRA itself; no hook
    attaches another)."""
    unknown = sorted(set(value) - set(PEFT_TYPES))
    if unknown or not value:
        raise ValueError(f"unknown PEFT type(s) {unknown or 'none given'}: kbit trains {', '.join(PEFT_TYPES)} adapters")


def _peft_types(instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    check_peft_types(value)


@attrs.frozen
class MethodInfo:
    """What a method is, needs and can do. Returned by the ``describe_method`` hook.

    - ``aliases``: other names that select this method (the canonical name is the entry-point name).
    - ``requires``: packages checked before any heavy work; a missing one makes the method "missing".
    - ``needs_gpu``: the method cannot run on a CPU-only machine.
    - ``peft_types``: adapter types the method supports during training (subset of ``PEFT_TYPES``).
    - ``quantized_training``: the base is quantized while adapters train (QLoRA-style).
    - ``post_training_quantization``: the method quantizes after training (implements ``quantize_model``).
    - ``needs_calibration``: post-training quantization needs calibration samples.
    """

    summary: str
    options: OptionSchema
    aliases: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    requires: tuple[Requirement, ...] = attrs.field(default=(), converter=tuple)
    needs_gpu: bool = False
    peft_types: tuple[str, ...] = attrs.field(default=("lora",), converter=tuple, validator=_peft_types)
    quantized_training: bool = False
    post_training_quantization: bool = False
    needs_calibration: bool = False

    def __attrs_post_init__(self) -> None:
        # one list of adapter types: what kbit methods shows must be what --peft accepts
        option = next((o for o in self.options.options if o.name == "peft_type"), None)
        choices = describe_parser(option.parse, option.default).choices if option else None
        if choices is not None and set(choices) != set(self.peft_types):
            raise ValueError(f"option peft_type accepts {', '.join(choices)} but MethodInfo(peft_types=...) lists "
                             f"{', '.join(self.peft_types)}; pass the same tuple to adapter_options(peft_types=...) and "
                             "MethodInfo(peft_types=...)")

    def missing_requirements(self) -> list[Requirement]:
        return [r for r in self.requires if not r.is_met()]

    def capabilities(self) -> dict[str, object]:
        return {
            "peft_types": list(self.peft_types),
            "quantized_training": self.quantized_training,
            "post_training_quantization": self.post_training_quantization,
            "needs_calibration": self.needs_calibration,
            "needs_gpu": self.needs_gpu,
        }


MERGE_ACTIONS = ("merge", "keep_adapter", "refuse")
GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "tq2_0", "mxfp4")  # what kbit export writes
MERGE_BASES = ("dequantized", "original")


@attrs.frozen
class MergePolicy:
    """What happens to a trained adapter. Returned by the ``merge_policy`` hook.

    - ``action``: "merge" (fold the adapter into a base and save a full model), "keep_adapter"
      (save only the adapter; ``reason`` says why), or "refuse" (merging is impossible; ``reason``).
    - ``base``: the base merged into: "dequantized" (the quantized base, dequantized to ``dtype`` —
      the weights the adapter was trained against) or "original" (the unquantized base as loaded).
    - ``dtype``: the dtype of the merged weights ("float32", "bfloat16" or "float16").
    - ``lm_head_dtype``: dtype to store the output head in, or None to use ``dtype``.
    - ``export``: the GGUF type the merged model is meant to be deployed as (e.g. "q4_1"), or None.
      ``kbit train`` then writes ``RUN/gguf/NAME-TYPE.gguf`` right after the merge and checks it
      against the trained model as strictly as the merge; ``kbit export RUN`` defaults to it.
    - ``export_head``: the output head's (tied embeddings') type in that file: "q8_0" (llama.cpp's
      choice for these widths) or "f16".
    - ``adapter_gguf``: write the trained adapter as a llama.cpp LoRA GGUF (RUN/gguf/NAME-lora.gguf)
      over the unchanged base GGUF file; needs a base read from a GGUF file.
    """

    action: str = attrs.field(validator=attrs.validators.in_(MERGE_ACTIONS))
    base: str = attrs.field(default="dequantized", validator=attrs.validators.in_(MERGE_BASES))
    dtype: str = attrs.field(default="float32", validator=attrs.validators.in_(("float32", "bfloat16", "float16")))
    lm_head_dtype: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("float32", "bfloat16", "float16")))
    )
    reason: str = attrs.field(default="")
    export: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(GGUF_TYPES)))
    export_head: str = attrs.field(default="q8_0", validator=attrs.validators.in_(("q8_0", "f16")))
    adapter_gguf: bool = False

    @export.validator
    def _export_needs_merge(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None and self.action != "merge":
            raise ValueError("a merge policy that exports must merge (action 'merge')")

    @reason.validator
    def _reason_when_not_merging(self, attribute: attrs.Attribute, value: str) -> None:
        if self.action != "merge" and not value:
            raise ValueError(f"a merge policy with action {self.action!r} must give a reason")

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)
