"""Options shared by methods (adapter, training, calibration), and attaching the adapter.

A plugin puts ``adapter_options(...)`` and ``training_options(...)`` (and, if it quantizes after
training, ``calibration_options(...)``), with its own defaults, into its option schema, and turns
the resolved values into the spec's typed records with ``adapter_settings(values)``,
``training_settings(values, device)`` and ``calibration_settings(values)``. In ``prepare_model`` it
calls ``prepare_for_adapter``; in ``merge_policy`` ``merge_or_keep``. kbit builds the PEFT config
from ``spec.adapter``, so every method trains adapters the same way. All of this is public through
``kbit.plugin``; the built-in methods use nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.core.model.compat import REENTRANT_OFF, enable_checkpointing
from kbit.core.system.device import DeviceInfo, resolve_compute_dtype
from kbit.core.errors import ConfigError
from kbit.core.contract.method_info import MergePolicy, check_peft_types
from kbit.core.contract.options import DTYPES, Option, OptionSchema, boolean, choice, integer, module_names, number
from kbit.core.contract.spec import ADAPTER_INITS, AdapterSettings, CalibrationSettings, TrainingSettings

ADAPTER_KEYS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "init", "use_rslora")


def adapter_options(
    r: int | str = 64,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: str = "all-linear",
    peft_types: tuple[str, ...] = ("lora",),
) -> OptionSchema:
    """The adapter options with a method's defaults; ``peft_type`` accepts only ``peft_types`` (the first is the
    default), which must be the ``MethodInfo(peft_types=...)`` of the method. ValueError for a type kbit cannot
    attach."""
    check_peft_types(tuple(peft_types))
    return OptionSchema(
        (
            Option("peft_type", peft_types[0], choice(*peft_types), "adapter type: " + ", ".join(peft_types)),
            Option("r", r, integer(minimum=1, auto=True), "adapter rank, or 'auto' to size it from the model and memory"),
            Option("lora_alpha", lora_alpha, number(minimum=0), "LoRA scaling numerator (scale = lora_alpha / r, or "
                   "lora_alpha / sqrt(r) with use_rslora)"),
            Option("lora_dropout", lora_dropout, number(minimum=0, below=1), "dropout on the adapter input"),
            Option("target_modules", target_modules, module_names, "'all-linear' or comma-separated module names"),
            Option("init", "default", choice(*ADAPTER_INITS),
                   "adapter start: default (a no-op) or loftq (cancels the base's quantization error; LoRA only)"),
            Option("use_rslora", False, boolean, "rank-stabilised LoRA (PEFT's use_rslora): scale lora_alpha / sqrt(r), "
                   "so a higher rank keeps learning at the same rate (LoRA and DoRA)"),
        )
    )


def adapter_settings(values: Mapping[str, Any], *, qa_group_size: int | None = None,
                     fake_quant: str | None = None, fake_quant_after: float = 0.0) -> AdapterSettings:
    """``spec.adapter`` from option values resolved against ``adapter_options``.

    ``qa_group_size`` makes the LoRA adapter a QA-LoRA one; ``fake_quant`` (a GGUF type) makes it train
    through that type's rounding of ``W + ΔW`` after ``fake_quant_after`` of its steps (see ``AdapterSettings``).
    """
    try:
        return AdapterSettings(**{key: values[key] for key in ADAPTER_KEYS}, qa_group_size=qa_group_size,
                               fake_quant=fake_quant, fake_quant_after=fake_quant_after)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def training_options(*, merge: bool = True) -> OptionSchema:
    """compute_dtype, gradient_checkpointing, merge_after_train, merge_dtype and adapter_dtype with a method's defaults."""
    return OptionSchema(
        (
            Option("compute_dtype", "auto", choice(*DTYPES), "matmul dtype: auto = bf16 on a GPU that has it (else fp16); on a CPU, bf16 where it has native bf16 (AVX512-BF16/AMX) and a measured probe finds bf16 faster, else fp32"),
            Option("gradient_checkpointing", "auto", choice("auto", "true", "false"),
                   "recompute activations in backward to save memory: auto = on where a training step without it would need more "
                   "than half the free memory (decided per run from the model, batch and example lengths; recomputing activations makes a step slower)"),
            Option("merge_after_train", merge, boolean, "merge the adapter into a full model after training"),
            Option("merge_dtype", "auto", choice(*DTYPES), "dtype of the merged model: auto = the compute dtype on a GPU, float32 on a CPU"),
            Option("adapter_dtype", "auto", choice(*DTYPES),
                   "dtype of the trained adapter weights: auto = float32 (PEFT's default; Adam keeps small updates), "
                   "unless the method needs one dtype throughout (qlora with a float quant_storage, for FSDP)"),
        )
    )


def training_settings(values: Mapping[str, Any], device: DeviceInfo, *, adapter_dtype: str | None = None,
                      learning_rate: float | None = None) -> TrainingSettings:
    """``spec.training`` from option values resolved against ``training_options``, for ``device``.

    ``adapter_dtype`` replaces what ``auto`` means for the adapter (e.g. a storage dtype FSDP needs);
    ``learning_rate`` is the method's own default learning rate (a run's ``--lr`` overrides it).
    """
    requested = values["adapter_dtype"]
    return TrainingSettings(
        compute_dtype=resolve_compute_dtype(values["compute_dtype"], device),
        adapter_dtype=(adapter_dtype or "float32") if requested == "auto" else requested,
        gradient_checkpointing=values["gradient_checkpointing"] == "true"
        or (values["gradient_checkpointing"] == "auto" and device.accelerator),
        merge_after_train=values["merge_after_train"],
        merge_dtype=_merge_dtype(values["merge_dtype"], device),
        learning_rate=learning_rate,
    )


def _merge_dtype(requested: str, device: DeviceInfo) -> str:
    # On a CPU the merged model stays float32 even where training computes in bf16: a short run's
    # adapter update is mostly below bf16's resolution of the base weights, so a bf16 merge rounded it
    # away (SmolLM2, 8 steps: 95% top-1 agreement with the trained model, under the 99% merge check).
    if requested == "auto" and not device.accelerator:
        return "float32"
    return resolve_compute_dtype(requested, device)


def calibration_options(samples: int = 64, max_length: int = 256) -> OptionSchema:
    """calibration_samples and calibration_max_length, for methods that quantize after training."""
    return OptionSchema(
        (
            Option("calibration_samples", samples, integer(minimum=1), "calibration texts taken from the training data"),
            Option("calibration_max_length", max_length, integer(minimum=1), "tokens per calibration text (longer ones are cut)"),
        )
    )


def calibration_settings(values: Mapping[str, Any]) -> CalibrationSettings:
    """``spec.calibration`` from option values resolved against ``calibration_options``."""
    return CalibrationSettings(samples=values["calibration_samples"], max_length=values["calibration_max_length"])


def require_adapter(spec: Any) -> AdapterSettings:
    """``spec.adapter``; raises ``ConfigError`` when the method trains no adapter."""
    if spec.adapter is None:
        raise ConfigError(f"method '{spec.method}' trains no adapter (its spec has no adapter settings)")
    return spec.adapter


def build_peft_config(spec: Any, fan_in_fan_out: bool = False) -> Any:
    """The PEFT config for ``spec``'s adapter (LoRA, DoRA or VeRA) on a causal LM; ``fan_in_fan_out`` for a
    model whose layers store their weights transposed (GPT-2's ``Conv1D``)."""
    from peft import LoraConfig, TaskType, VeraConfig

    settings = require_adapter(spec)
    if settings.r == "auto":
        raise ConfigError("adapter rank 'auto' must be resolved before building the adapter (see kbit.core.train.sizing)")
    targets = settings.target_modules if isinstance(settings.target_modules, str) else list(settings.target_modules)
    if settings.peft_type == "vera":
        return VeraConfig(r=settings.r, target_modules=targets, vera_dropout=settings.lora_dropout,
                          task_type=TaskType.CAUSAL_LM)
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets,
        use_dora=settings.peft_type == "dora",
        use_rslora=settings.use_rslora,
        fan_in_fan_out=fan_in_fan_out,
        task_type=TaskType.CAUSAL_LM,
    )


def attach_adapter(model: Any, spec: Any) -> Any:
    """Wrap ``model`` (already passed through the method's ``prepare_model``) in a PEFT model, whose
    plain LoRA layers apply their input dropout without keeping the dropped input (``kbit.core.model.lora_dropout``)."""
    from peft import get_peft_model

    from kbit.core.model.lora_dropout import fuse_lora_dropout

    transposed = any(type(module).__name__ == "Conv1D" for module in model.modules())  # PEFT warns, then sets it
    peft_model = get_peft_model(model, build_peft_config(spec, fan_in_fan_out=transposed))
    fuse_lora_dropout(peft_model)
    if require_adapter(spec).qa_group_size:
        pool_adapter_inputs(peft_model, spec.adapter.qa_group_size)
    return through_grid(peft_model, spec)


def through_grid(peft_model: Any, spec: Any) -> Any:
    """``peft_model`` computing through ``spec.adapter.fake_quant``'s rounding where the spec asks for it
    (:mod:`kbit.core.model.fake_quant`): wherever kbit attaches or loads such an adapter. Returns the model."""
    grid = spec.adapter.fake_quant if spec.adapter is not None else None
    if grid is None:
        return peft_model
    from kbit.core.model.fake_quant import train_through_grid

    return train_through_grid(peft_model, grid)


def pool_adapter_inputs(model: Any, group_size: int) -> None:
    """Make every LoRA ``A`` matrix of ``model`` constant within groups of ``group_size`` input features,
    and keep it so while it trains: QA-LoRA (Xu et al. 2023) as a plain PEFT LoRA.

    QA-LoRA averages the adapter's input over each group before a narrow ``A``. A full-width ``A``
    whose columns are equal within each group computes the same thing (up to a constant factor), so
    its update ``B @ A`` is constant within each group of a weight row. kbit keeps the adapter an
    ordinary PEFT LoRA — saved, loaded, resumed and merged by PEFT as any other — instead of PEFT's
    own QA-LoRA variant, which (peft 0.21) applies only to GPTQ layers and cannot merge.
    ``A`` starts as one column per group repeated (the same output scale as PEFT's initialisation)
    and each gradient is replaced by its group mean; Adam then updates every column of a group
    identically, bit for bit, so ``A`` stays group-constant.
    """
    import torch

    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict):
            continue
        for layer in lora_a.values():
            weight = layer.weight
            rank, width = weight.shape
            if width % group_size:
                raise ConfigError(f"QA-LoRA group size {group_size} does not divide the input width {width} of {name}; "
                                  "choose a group size dividing every adapted layer's input width")
            with torch.no_grad():
                first = weight[:, ::group_size]
                weight.copy_(first.repeat_interleave(group_size, dim=1))
            weight.register_hook(lambda grad, g=group_size: _group_mean(grad, g))


def _group_mean(grad: Any, group_size: int) -> Any:
    rank, width = grad.shape
    means = grad.reshape(rank, width // group_size, group_size).mean(dim=-1, keepdim=True)
    return means.expand(rank, width // group_size, group_size).reshape(rank, width)


def prepare_for_adapter(model: Any, spec: Any, *, kbit_base: bool) -> Any:
    """Freeze the base and set up gradient checkpointing (``spec.training.gradient_checkpointing``).

    ``kbit_base``: the base holds k-bit weights loaded by transformers; then
    ``peft.prepare_model_for_kbit_training`` also upcasts the remaining half-precision parameters
    (norms, embeddings) to float32 for stability. Any other base is left in its compute dtype.
    """
    checkpointing = spec.training.gradient_checkpointing
    kwargs = dict(REENTRANT_OFF) if checkpointing else None
    if kbit_base:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=kwargs)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if checkpointing:
        enable_checkpointing(model)
        model.enable_input_require_grads()
    return model


def merge_or_keep(spec: Any, *, base: str, reason: str = "", lm_head_dtype: str | None = None,
                  export: str | None = None, export_head: str = "q8_0", dtype: str | None = None) -> MergePolicy:
    """Merge into ``base`` in ``dtype`` (default ``spec.training.merge_dtype``), unless the user turned
    merging off; ``export`` names the GGUF type the merged model is deployed as (see ``MergePolicy``)."""
    if not spec.training.merge_after_train:
        return MergePolicy(action="keep_adapter", reason="merge_after_train=false")
    return MergePolicy(action="merge", base=base, dtype=dtype or spec.training.merge_dtype, lm_head_dtype=lm_head_dtype,
                       reason=reason, export=export, export_head=export_head)
