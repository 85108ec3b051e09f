"""Helpers and hooks shared by the post-training quantization methods (``gptq``, ``awq``). Not a plugin itself.

Both train an adapter on the full-precision base, merge it, and then quantize the merged model with
llm-compressor's ``oneshot`` into a compressed-tensors checkpoint that ``from_pretrained`` loads.
They differ in the llm-compressor modifiers of the recipe: gptq rounds with GPTQ; awq scales channels
with AWQ first, then rounds (with GPTQ by default, see ``kbit.plugins.awq``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from kbit.plugin import (
    ConfigError,
    DeviceInfo,
    MergePolicy,
    Option,
    OptionSchema,
    QuantizationSpec,
    Requirement,
    adapter_options,
    adapter_settings,
    boolean,
    calibration_options,
    calibration_settings,
    described,
    hookimpl,
    integer,
    merge_or_keep,
    prepare_for_adapter,
    training_options,
    training_settings,
)

PEFT_TYPES = ("lora", "vera")
GPTQ_DAMPENING = 0.01  # GPTQ's Hessian dampening (fraction of the mean diagonal): gptq's default, awq's rounding=gptq
GROUP_CANDIDATES = (128, 64, 32)
REQUIRES = (
    Requirement("llmcompressor", "pip install 'kbit[ptq]'"),
    Requirement("compressed_tensors", "pip install 'kbit[ptq]'"),
    Requirement("peft", "pip install peft"),
)


def _names(raw: Any) -> list[str]:
    names = [str(n).strip() for n in raw] if isinstance(raw, (list, tuple)) else [n.strip() for n in str(raw).split(",")]
    names = [n for n in names if n and n != "none"]
    return names


described(_names, "module names", "comma-separated module names, or 'none'")


def ptq_options(*, symmetric: bool, extra: tuple[Option, ...] = ()) -> OptionSchema:
    """Adapter and training options plus the quantization settings both methods share."""
    return (
        adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=PEFT_TYPES)
        + training_options()
        + OptionSchema(
            (
                Option("bits", 4, integer(allowed=(4, 8)), "weight bits: 4 or 8"),
                Option("group_size", "auto", integer(minimum=1, auto=True),
                       "weights per scale; auto = the largest of 128/64/32 dividing every quantized layer's width"),
                Option("symmetric", symmetric, boolean,
                       "symmetric integer grid (no zero point)"),
                Option("ignore", ["lm_head"], _names, "comma-separated modules left unquantized ('none' for none)"),
                *extra,
            )
        )
        + calibration_options(samples=64, max_length=256)
    )


def ptq_spec(name: str, options: OptionSchema, raw: Mapping[str, Any], device: DeviceInfo,
             extra_keys: tuple[str, ...] = ()) -> QuantizationSpec:
    """The spec of a post-training method; ``extra_keys`` are its own options copied into extras."""
    values = options.resolve(raw, method=name)
    group = values["group_size"]
    return QuantizationSpec(
        method=name,
        weights_bits=values["bits"],
        activations_bits=None,
        group_size=None if group == "auto" else group,  # 'auto' is settled against the model in resolve_for_model
        symmetric=values["symmetric"],
        backend="llm-compressor",
        adapter=adapter_settings(values),
        training=training_settings(values, device),
        calibration=calibration_settings(values),
        extras={
            "scheme": f"W{values['bits']}A16",
            "group_size_requested": group,
            "ignore": values["ignore"],
            **{key: values[key] for key in extra_keys},
        },
    )


# The hooks both methods implement the same way; each method module imports them, and pluggy
# registers them as that module's own (it collects every marked attribute of the plugin module).

@hookimpl
def resolve_for_model(spec: QuantizationSpec, model_config: Any) -> QuantizationSpec:
    """Settle the group size against the model's layer widths (or refuse one that does not divide them)."""
    requested = spec.extras["group_size_requested"]
    return attrs.evolve(spec, group_size=resolve_group_size(requested, layer_widths(model_config)))


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> None:
    return None  # the base trains in full precision; quantization comes after the merge


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    return prepare_for_adapter(model, spec, kbit_base=False)


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    policy = merge_or_keep(spec, base="original")
    if policy.action != "merge":
        # Without a merged model there is nothing to quantize; say so rather than silently skip.
        return MergePolicy(action="keep_adapter", reason="merge_after_train=false: the merged model is not "
                           "written, so it is not quantized either (run 'kbit quantize' on a merged model later)")
    return policy


def layer_widths(config: Any) -> dict[str, int]:
    """in_features of the quantized Linear layers, by the config field they come from; ConfigError for a
    config that does not name them so (GPT-2's, whose layers are ``Conv1D``)."""
    if getattr(config, "intermediate_size", None) is None:
        raise ConfigError(f"this {getattr(config, 'model_type', 'unknown')} model's config has no intermediate_size, "
                          "which group-wise quantization sizes its groups from; choose another method (e.g. qlora)")
    widths = {"hidden_size": int(config.hidden_size), "intermediate_size": int(config.intermediate_size)}
    head_dim = getattr(config, "head_dim", None)
    heads = getattr(config, "num_attention_heads", None)
    if head_dim and heads and head_dim * heads != config.hidden_size:
        widths["num_attention_heads*head_dim (o_proj input)"] = int(head_dim * heads)
    return widths


def resolve_group_size(requested: int | str, widths: Mapping[str, int]) -> int:
    """The group size to quantize with; ConfigError names the layer width that does not fit."""
    described = ", ".join(f"{k}={v}" for k, v in widths.items())
    if requested == "auto":
        for candidate in GROUP_CANDIDATES:
            if all(width % candidate == 0 for width in widths.values()):
                return candidate
        raise ConfigError(
            f"no group size of {'/'.join(map(str, GROUP_CANDIDATES))} divides every quantized layer width ({described}); "
            "pass -o group_size=N with N dividing them all"
        )
    for field, width in widths.items():
        if width % requested:
            fits = [c for c in (256, *GROUP_CANDIDATES, 16) if all(w % c == 0 for w in widths.values())]
            hint = f"; e.g. group_size={fits[0]}" if fits else ""
            raise ConfigError(
                f"group_size={requested} does not divide the layer width {field}={width}: every quantized Linear "
                f"needs in_features divisible by the group size ({described}){hint}"
            )
    return int(requested)


def quantize_with(recipe_factory: Callable[..., Any], model_dir: Path, spec: QuantizationSpec, calibration: list[str],
                  output_dir: Path, context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
    """Load ``model_dir``, run llm-compressor ``oneshot`` and save compressed tensors.

    ``recipe_factory(config_groups=..., ignore=...)`` returns the method's oneshot recipe.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not calibration:
        raise ConfigError(f"method '{spec.method}' needs calibration texts; none were given")
    extras = spec.extras
    group = resolve_group_size(spec.group_size or extras["group_size_requested"],
                               layer_widths(AutoConfig.from_pretrained(model_dir)))

    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from llmcompressor import oneshot

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, spec.training.compute_dtype),
                                                 use_safetensors=True)
    texts = list(calibration[: spec.calibration.samples])
    max_length = spec.calibration.max_length
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=spec.weights_bits, type="int", symmetric=spec.symmetric,
                                 strategy="group", group_size=group),
    )
    recipe = recipe_factory(config_groups={"group_0": scheme}, ignore=list(extras["ignore"]))
    with context():
        oneshot(model=model, dataset=dataset, recipe=recipe, num_calibration_samples=len(texts),
                max_seq_length=max_length, shuffle_calibration_samples=False)
    model.save_pretrained(output_dir, save_compressed=True)
    tokenizer.save_pretrained(output_dir)
