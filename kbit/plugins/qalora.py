"""qalora: the 4- or 5-bit model you deploy is exactly the model you trained.

- Base: every linear layer (not the output head) quantized to GGUF Q4_1 (``-o target=q5_1``: Q5_1)
  exactly as llama.cpp's reference quantizer does: blocks of 32 weights along each row, per block
  ``d = (max - min) / 15`` (Q5_1: ``/ 31``) and ``m = min`` stored in float16, codes rounded to
  0..15 (0..31), ``w = d·q + m``. The layers hold the blocks themselves (20 bytes per 32 weights,
  24 for Q5_1, as in the file).
- Adapter: QA-LoRA with groups of 32 (``AdapterSettings.qa_group_size``): the adapter's update is
  constant within each block of 32 weights of a row. It trains at its own default learning rate
  (``LEARNING_RATE``; ``--lr`` overrides it).
- Merge: such an update changes only each block's offset, ``m' = m + ΔW[row, block]``, while the
  codes ``q`` and scales ``d`` stay as trained. kbit merges into the dequantized base in float32,
  then writes the Q4_1 (Q5_1) GGUF (``MergePolicy.export``): re-quantizing the merged rows by llama.cpp's
  rule gives back the same ``d`` and ``q`` (every block keeps its lowest and highest code, so its min and max
  move together) with the new ``m`` — the file equals the trained model up to float16 rounding of
  ``m'``, which the run checks by loading the file back.
- Runtime (``-o runtime=llama.cpp``): llama.cpp's CPU backend multiplies Q4_1 weights by the input
  rounded to Q8_1 blocks (8 bits per value, a float16 scale per 32); with this option each quantized
  layer trains on that rounded input (straight-through gradient), bit for bit as ggml rounds it. The
  merge check then compares weights, with the rounding off (``exact_activations``): the float
  ``merged/`` model has none. Not the default: it cannot make llama.cpp's whole forward equal the
  trained one (ggml's other float arithmetic differs in the last bits and the rounding amplifies
  that), and on the default task it did not bring the file closer (BENCHMARKS.md, issue 23).

Why not merge into GPTQ-style integer zero points: they cannot absorb an arbitrary float offset;
the float16 minimum of Q4_1 and Q5_1 can. (Q4_0/Q5_0 have no offset: ``qat`` trains for those.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kbit.plugin import (
    Q4_1_BLOCK,
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
    described,
    hookimpl,
    integer,
    merge_or_keep,
    prepare_for_adapter,
    training_options,
    training_settings,
)

NAME = "qalora"
TARGETS = ("q4_1", "q5_1")
# The default learning rate, above kbit's: Adam moves each parameter by about the learning rate, and the 32
# tied columns of a group move together against the group's summed input, so an Adam step changes a
# QA-LoRA adapter's output by a few times less than a plain LoRA's. At kbit's default the adapter ends
# undertrained: it answers the training wording and loses the task in any other (BENCHMARKS.md, issue 24).
LEARNING_RATE = 5e-3


def _block(raw: Any) -> int:
    size = integer(minimum=1)(raw)
    if size != Q4_1_BLOCK:
        raise ValueError(f"expected {Q4_1_BLOCK}: a Q4_1/Q5_1 block holds {Q4_1_BLOCK} weights, and the adapter's groups "
                         "must be the blocks whose offsets the merge changes")
    return size


described(_block, "integer", f"{Q4_1_BLOCK} only", (Q4_1_BLOCK,))


OPTIONS = (
    adapter_options(r=64, lora_alpha=16, lora_dropout=0.05, peft_types=("lora",))
    + training_options()
    + OptionSchema(
        (
            Option("target", "q4_1", choice(*TARGETS), "the GGUF type of the base and the file: q4_1 or q5_1 (offset formats)"),
            Option("group_size", Q4_1_BLOCK, _block, "weights per block and QA-LoRA group (32 only)"),
            Option("head_type", "q8_0", choice("q8_0", "f16"),
                   "how the GGUF stores the output head and embeddings (kept out of the 4-bit blocks)"),
            Option("runtime", "exact", choice("exact", "llama.cpp"),
                   "exact: train each layer on the float input; llama.cpp: on the input rounded as llama.cpp's "
                   "CPU matmul rounds it for Q4_1/Q5_1 (Q8_1 blocks)"),
        )
    )
)


@hookimpl
def describe_method() -> MethodInfo:
    return MethodInfo(
        summary="GGUF Q4_1 or Q5_1 base (llama.cpp's quantizer), QA-LoRA adapter merged into the block offsets: "
                "the Q4_1/Q5_1 file is the trained model",
        options=OPTIONS,
        aliases=("qa-lora", "q4_1"),
        requires=(Requirement("peft", "pip install peft"), Requirement("gguf", "pip install gguf")),
        peft_types=("lora",),
        quantized_training=True,
    )


@hookimpl
def resolve_spec(options: Mapping[str, Any], device: DeviceInfo) -> QuantizationSpec:
    if options.get("compute_dtype", "auto") == "auto":
        # The base is loaded in the compute dtype and then quantized: the Q4_1 grid must come from the
        # checkpoint's own weights, as llama.cpp's quantizer takes them, not from a bf16 rounding of them.
        options = {**options, "compute_dtype": "float32"}
    values = OPTIONS.resolve(options, method=NAME)
    if values["merge_dtype"] not in ("auto", "float32"):
        raise ConfigError(f"method {NAME} merges in float32 (the new block offsets are rounded once, to float16, in "
                          "the file); drop -o merge_dtype")
    return QuantizationSpec(
        method=NAME,
        weights_bits=5 if values["target"] == "q5_1" else 4,
        group_size=values["group_size"],
        symmetric=False,
        backend=f"gguf-{values['target']}",
        adapter=adapter_settings(values, qa_group_size=values["group_size"]),
        training=training_settings(values, device, learning_rate=LEARNING_RATE),
        extras={"head_type": values["head_type"], "runtime": values["runtime"]},
    )


@hookimpl
def resolve_for_model(spec: QuantizationSpec, model_config: Any) -> None:
    """Every quantized layer's input width must hold whole blocks."""
    widths = {"hidden_size": getattr(model_config, "hidden_size", 0),
              "intermediate_size": getattr(model_config, "intermediate_size", 0)}
    heads, head_dim = getattr(model_config, "num_attention_heads", 0), getattr(model_config, "head_dim", None)
    if heads and head_dim:
        widths["num_attention_heads*head_dim"] = heads * head_dim
    uneven = {field: width for field, width in widths.items() if width and width % spec.group_size}
    if uneven:
        described = ", ".join(f"{k}={v}" for k, v in uneven.items())
        raise ConfigError(f"method {NAME} needs every linear layer's input width to be a multiple of the {_target(spec).upper()} block "
                          f"({spec.group_size}); this model has {described} — choose another method (e.g. qlora)")


@hookimpl
def build_quant_config(spec: QuantizationSpec) -> None:
    return None  # quantized by quantize_base: transformers has no Q4_1 training format


@hookimpl
def quantize_base(model: Any, spec: QuantizationSpec) -> Any:
    from kbit.plugin import activation_format, replace_linears
    from kbit.plugins._q4_1 import Q41Linear
    from kbit.plugins._q5_1 import Q51Linear

    target = _target(spec)
    layer = Q51Linear if target == "q5_1" else Q41Linear
    # runs written before the option existed trained on the exact input
    activations = activation_format(target) if spec.extras.get("runtime", "exact") == "llama.cpp" else None
    replace_linears(model, lambda name, linear: layer(linear, activations))
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
    return merge_or_keep(spec, base="dequantized", dtype="float32", export=_target(spec), export_head=spec.extras["head_type"],
                         reason=f"QA-LoRA's update is constant per {_target(spec).upper()} block: the merge moves only "
                                "the block offsets")


def _target(spec: QuantizationSpec) -> str:
    return spec.backend.removeprefix("gguf-")  # "gguf-q4_1" or "gguf-q5_1"
