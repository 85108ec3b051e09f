"""qat: quantization-aware LoRA for a GGUF type — the file you deploy is the model you trained.

- Base: the float base (float32, as the GGUF writer reads the checkpoint).
- Adapter: a plain LoRA whose every adapted layer computes with ``round(W + ΔW)``, the exact rounding
  of the target type (block size, scale rule, float16 scales, as ggml's reference quantizer and
  gguf-py do: ``AdapterSettings.fake_quant``), with a straight-through gradient. The layers the adapter
  leaves alone (not the output head) are rounded once. The adapter therefore learns to work through
  the rounding instead of having it applied afterwards, as a round-to-nearest export of a float
  fine-tune does. The first share of the steps (``-o rounding_after``, half by default) trains it in
  float, on the unrounded weights; the rest through the rounding. It trains at its own default
  learning rate (``LEARNING_RATE``; ``--lr`` overrides it).
- Merge: into the float base, then every linear layer is rounded to the target grid: ``merged/`` is the
  trained model bit for bit, and the GGUF of that type written from it holds exactly those weights
  (``MergePolicy.export``; the run writes it and checks it against the trained model).

``-o target=`` any type gguf-py writes below 16 bits: q4_0, q4_1, q5_0, q5_1, q8_0, tq2_0 (ternary,
blocks of 256: rows of another width are stored in float16, as the writer stores them) and mxfp4.
The output head (the tied embeddings) is stored as ``head_type`` and not rounded in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.plugin import (
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
    hookimpl,
    merge_or_keep,
    number,
    prepare_for_adapter,
    training_options,
    training_settings,
)

NAME = "qat"
# The default learning rate, above kbit's: an update smaller than about half a grid step rounds back to
# the base weight, so small steps are mostly invisible to the forward pass (wholly so on a base that
# already lies on the grid, as one read from a file of that type does). At kbit's default the adapter
# ended undertrained: it kept its score on the training wording and lost it on others (BENCHMARKS.md, issue 24).
LEARNING_RATE = 5e-3
# Half the steps in float first: the adapter learns the task on the smooth loss, then the rest of the run
# adapts it to the grid. Through the grid from the first step, the q4_0 file answered fewer held-out items
# (BENCHMARKS.md, issue 24).
FLOAT_SHARE = 0.5
TARGETS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "tq2_0", "mxfp4")
# target: (bits per stored weight code, block size, symmetric grid)
GRIDS = {"q4_0": (4, 32, True), "q4_1": (4, 32, False), "q5_0": (5, 32, True), "q5_1": (5, 32, False),
         "q8_0": (8, 32, True), "tq2_0": (2, 256, True), "mxfp4": (4, 32, True)}

OPTIONS = (
    adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=("lora",))
    + training_options()
    + OptionSchema(
        (
            Option("target", "q4_0", choice(*TARGETS), "the GGUF type trained through and written"),
            Option("rounding_after", FLOAT_SHARE, number(minimum=0, below=1),
                   "share of the steps trained in float before the rest train through the rounding (0: all through it)"),
            Option("head_type", "q8_0", choice("q8_0", "f16"),
                   "how the GGUF stores the output head and tied embeddings (not rounded in training)"),
        )
    )
)


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="quantization-aware LoRA: trains through the exact rounding of a GGUF type (q4_0 ... tq2_0, mxfp4); "
                "the file of that type is the trained model",
        options=OPTIONS,
        aliases=("qat-lora",),
        requires=(Requirement("peft", "pip install peft"), Requirement("gguf", "pip install gguf")),
        peft_types=("lora",),
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    if options.get("compute_dtype", "auto") == "auto":
        # The grid is taken from the float32 checkpoint, as the GGUF writer takes it.
        options = {**options, "compute_dtype": "float32"}
    values = OPTIONS.resolve(options, method=NAME)
    if values["merge_dtype"] not in ("auto", "float32"):
        raise ConfigError(f"method {NAME} merges in float32 (the merged weights are rounded to the {values['target']} "
                          "grid, which a 16-bit merge would round again); drop -o merge_dtype")
    target = values["target"]
    bits, block, symmetric = GRIDS[target]
    return QuantizationSpec(
        method=NAME,
        weights_bits=bits,
        group_size=block,
        symmetric=symmetric,
        backend=f"gguf-{target}",
        adapter=adapter_settings(values, fake_quant=target, fake_quant_after=values["rounding_after"]),
        training=training_settings(values, device, learning_rate=LEARNING_RATE),
        extras={"head_type": values["head_type"]},
    )


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> None:
    return None  # the base trains in float; the rounding is applied to W + ΔW in every forward pass


@hookimpl
def prepare_model(model: Any, spec: QuantizationSpec) -> Any:
    return prepare_for_adapter(model, spec, kbit_base=False)


@hookimpl
def merge_policy(spec: QuantizationSpec) -> MergePolicy:
    return merge_or_keep(spec, base="original", dtype="float32", export=spec.adapter.fake_quant,
                         export_head=spec.extras["head_type"],
                         reason=f"merged into the float base and rounded to the {spec.adapter.fake_quant} grid it trained through")
