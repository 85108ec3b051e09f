"""The Hugging Face architectures kbit writes as GGUF, and how their config and weights map onto llama.cpp's.

Reproduced from llama.cpp's ``convert_hf_to_gguf.py`` (``TextModel.set_gguf_parameters``,
``LlamaModel``, ``Qwen2Model``):

- ``LlamaForCausalLM`` and ``MistralForCausalLM`` become GGUF architecture ``llama``;
  ``Qwen2ForCausalLM`` becomes ``qwen2`` and ``Qwen3ForCausalLM`` ``qwen3`` (``Qwen3Model`` is
  ``Qwen2Model`` plus the per-head q/k norms, ``attn_q_norm``/``attn_k_norm`` in gguf-py's map).
- ``Gemma2ForCausalLM`` becomes ``gemma2`` (``Gemma2Model``) and ``Gemma3ForCausalLM`` (``gemma3_text``)
  ``gemma3`` (``Gemma3Model``): every ``*norm.weight`` is stored plus one (Gemma's RMS norm scales by
  ``1 + w``, llama.cpp's by the stored weight), the sliding window is written, and for gemma2 the attention
  and final logit soft-caps. llama.cpp fixes what transformers reads from the config: the query scale
  (``1/sqrt(head_dim)``, or ``1/sqrt(hidden_size/heads)`` for its 27B block counts, 46 and 62), the layer
  pattern (every 2nd, every 6th layer global), gemma2's soft-caps (always on), gemma3's sliding-layer RoPE
  base (10000) and no soft-cap: a config that differs is refused, as is RoPE scaling other than Gemma 3's
  linear scaling of its global layers (4B and up), written as ``rope.scaling.type``/``factor``.
- ``Phi3ForCausalLM`` becomes ``phi3`` (``Phi3MiniModel``): its fused ``qkv_proj`` and ``gate_up_proj`` are
  written as they are (``attn_qkv``, ``ffn_up``), with the rotated width (``partial_rotary_factor``), the original
  context length and, for ``longrope`` (Phi-3 128k, Phi-3.5, Phi-4-mini), the long and short factor tensors and
  the attention factor. llama.cpp runs Phi-3 without its sliding window; kbit writes it and warns where it is
  shorter than the context.
- Hyperparameters: block count, context length, embedding and feed-forward width, head counts,
  RoPE base, RMS-norm epsilon; for ``llama`` also the vocabulary size and the RoPE dimension count
  (the head width), and key/value length where ``config.json`` states ``head_dim``.
- Llama's q and k projection rows are permuted (``LlamaModel.permute``): llama.cpp rotates
  interleaved pairs where transformers rotates halves. Qwen2 and Qwen3 use the halves layout and keep rows.
- Tensor names come from ``gguf.get_tensor_name_map``; ``lm_head`` is left out when the
  embeddings are tied (llama.cpp reuses ``token_embd``), and rotary ``inv_freq`` buffers are dropped.

- Llama 3's RoPE scaling (``rope_type: llama3``) becomes the ``rope_freqs`` tensor of per-pair factors.

Everything else is refused in one line, and so are features these rules do not carry over faithfully
(other RoPE scaling, Llama attention/MLP biases): the check after writing would catch them, but only after
the work; refusing first says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from kbit.core.errors import ConfigError


@attrs.frozen
class Architecture:
    """How one Hugging Face ``model_type`` is written: GGUF architecture name and q/k row permutation."""

    model_type: str
    gguf_name: str
    permute_qk: bool
    norm_shift: float = 0.0  # added to every ``*norm.weight`` on the way into the file
    # Gemma: llama.cpp's fixed layer pattern (every ``sliding_period``-th layer global, the others sliding) and the
    # block count at which it scales queries by ``hidden_size / heads`` instead of the head width (its 27B)
    sliding_period: int = 0
    wide_query_blocks: int = 0


SUPPORTED = {
    "llama": Architecture("llama", "llama", True),
    "mistral": Architecture("mistral", "llama", True),
    "qwen2": Architecture("qwen2", "qwen2", False),
    "qwen3": Architecture("qwen3", "qwen3", False),
    "phi3": Architecture("phi3", "phi3", False),
    "gemma2": Architecture("gemma2", "gemma2", False, norm_shift=1.0, sliding_period=2, wide_query_blocks=46),
    "gemma3_text": Architecture("gemma3_text", "gemma3", False, norm_shift=1.0, sliding_period=6, wide_query_blocks=62),
}


def by_gguf_name(name: str) -> Architecture | None:
    """The architecture a GGUF file's ``general.architecture`` names (``llama`` is Llama's, not Mistral's)."""
    return next((a for a in SUPPORTED.values() if a.gguf_name == name), None)


CONVERT_INSTEAD = "use llama.cpp's convert_hf_to_gguf.py on the merged model instead"


def architecture_of(config: Mapping[str, Any], where: str, remedy: str = CONVERT_INSTEAD) -> Architecture:
    """The :class:`Architecture` for ``config.json``'s contents; ConfigError for anything else, ending in
    ``remedy`` where the architecture is the reason."""
    model_type = str(config.get("model_type", ""))
    if model_type not in SUPPORTED:
        raise ConfigError(f"{where}: kbit exports GGUF for {', '.join(sorted(SUPPORTED))} models, not "
                          f"'{model_type or 'unknown'}'; {remedy}")
    rope_type = rope_scaling(config).get("rope_type")
    carried = {"llama": ("llama3",), "gemma3": ("linear",), "phi3": ("longrope",)}.get(  # gemma3: its check
        SUPPORTED[model_type].gguf_name, ())
    if rope_type not in (None, "default", *carried):
        raise ConfigError(f"{where}: RoPE scaling '{rope_type}' is not carried into GGUF by kbit; {remedy}")
    if model_type != "qwen2" and (config.get("attention_bias") or config.get("mlp_bias")):
        raise ConfigError(f"{where}: a {model_type} model with attention or MLP biases is not exported by kbit; {remedy}")
    architecture = SUPPORTED[model_type]
    if architecture.sliding_period:
        _check_gemma(config, architecture, where, remedy)
    return architecture


def gemma_query_scalar(config: Mapping[str, Any], architecture: Architecture) -> int:
    """The query scale llama.cpp gives a Gemma file (as ``query_pre_attn_scalar``): it decides by block count."""
    if int(config["num_hidden_layers"]) == architecture.wide_query_blocks:
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return _head_dim(config)


def gemma3_rope(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Gemma 3's RoPE parameters of its global and its sliding layers (transformers 5 keeps one set per layer type;
    older configs a ``rope_theta`` for the global layers and ``rope_local_base_freq`` for the sliding ones)."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, Mapping) and "full_attention" in parameters:
        return dict(parameters["full_attention"]), dict(parameters.get("sliding_attention") or {})
    return ({"rope_theta": config.get("rope_theta", 1_000_000.0), **rope_scaling(config)},
            {"rope_theta": config.get("rope_local_base_freq", 10_000.0)})


def _check_gemma(config: Mapping[str, Any], architecture: Architecture, where: str, remedy: str) -> None:
    name = architecture.gguf_name
    scalar, wanted = config.get("query_pre_attn_scalar"), gemma_query_scalar(config, architecture)
    if scalar is None or float(scalar) != float(wanted):
        raise ConfigError(f"{where}: query_pre_attn_scalar {scalar} is not the {wanted} llama.cpp scales a {name} model "
                          f"of this shape by; {remedy}")
    period = architecture.sliding_period
    layers = range(int(config["num_hidden_layers"]))
    pattern = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in layers]
    if config.get("layer_types") not in (None, pattern):
        raise ConfigError(f"{where}: layer_types differ from the pattern llama.cpp runs {name} with (every {period}th layer "
                          f"global, the others sliding); {remedy}")
    if name == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if config.get(key) is None:
                raise ConfigError(f"{where}: {key} is off, and llama.cpp always applies it to gemma2; {remedy}")
        return
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "use_bidirectional_attention"):
        if config.get(key):
            raise ConfigError(f"{where}: {key} is set, which llama.cpp's gemma3 does not apply; {remedy}")
    full, sliding = gemma3_rope(config)
    if full.get("rope_type", "default") not in ("default", "linear") or sliding.get("rope_type", "default") != "default":
        scaled = full if full.get("rope_type", "default") != "default" else sliding
        raise ConfigError(f"{where}: RoPE scaling '{scaled.get('rope_type')}' is not carried into GGUF by kbit; {remedy}")
    if float(sliding.get("rope_theta") or 10_000.0) != 10_000.0:
        raise ConfigError(f"{where}: the sliding layers' RoPE base {sliding.get('rope_theta')} is not the 10000 llama.cpp "
                          f"runs gemma3's with; {remedy}")


def _head_dim(config: Mapping[str, Any]) -> int:
    return int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))


def rope_scaling(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json``'s RoPE scaling parameters with ``rope_type`` set (transformers 5's ``rope_parameters``, or
    the older ``rope_scaling``, whose type may be spelled ``type``); empty for none."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, Mapping) and parameters.get("rope_type") not in (None, "default"):
        return dict(parameters)
    rope = config.get("rope_scaling")
    if isinstance(rope, Mapping) and rope.get("rope_type", rope.get("type")) is not None:
        return {**rope, "rope_type": rope.get("rope_type", rope.get("type"))}
    return {}


def rope_tensors(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The float32 tensors that carry a model's RoPE scaling into llama.cpp, ``(gguf_name, array)``; none without it.

    - Llama 3 (``llama3``): ``rope_freqs``, one factor per rotated pair that llama.cpp divides each plain
      frequency by, taken from transformers' own frequencies, so the file rotates as the trained model did.
    - Phi-3 (``longrope``): ``rope_factors_long`` and ``rope_factors_short``, as ``convert_hf_to_gguf.py``
      writes them; llama.cpp takes the long ones in a context (``n_ctx``) longer than the original length,
      transformers for an input longer than it.
    """
    import gguf
    import numpy as np

    rope = rope_scaling(config)
    if rope.get("rope_type") == "longrope":
        pairs = ((gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, "long_factor"), (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, "short_factor"))
        return [(f"{gguf.TENSOR_NAMES[tensor]}.weight", np.asarray(rope[key], dtype=np.float32)) for tensor, key in pairs]
    if rope.get("rope_type") != "llama3":
        return []
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    settings = _transformers_config(config)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](settings)
    plain, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(settings)
    return [(f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}.weight", (plain / scaled).numpy())]


def _transformers_config(config: Mapping[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(**config)


def rope_theta(config: Mapping[str, Any]) -> float | None:
    parameters = config.get("rope_parameters")
    if isinstance(parameters, Mapping) and parameters.get("rope_theta") is not None:
        return float(parameters["rope_theta"])
    return float(config["rope_theta"]) if config.get("rope_theta") is not None else None


def write_hyperparameters(writer: Any, config: Mapping[str, Any], architecture: Architecture) -> None:
    """Add the architecture keys (``<arch>.block_count`` …) for ``config`` to a ``gguf.GGUFWriter``."""
    writer.add_block_count(int(config["num_hidden_layers"]))
    if config.get("max_position_embeddings") is not None:
        writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    heads = int(config["num_attention_heads"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    full = gemma3_rope(config)[0] if architecture.gguf_name == "gemma3" else None  # Gemma 3's global layers' RoPE
    theta = full.get("rope_theta") if full is not None else rope_theta(config)
    if theta is not None:  # gemma3: the global layers' (llama.cpp runs the sliding ones at 10000)
        writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    if config.get("head_dim") is not None:
        writer.add_key_length(int(config["head_dim"]))
        writer.add_value_length(int(config["head_dim"]))
    if architecture.gguf_name == "llama":
        writer.add_vocab_size(int(config["vocab_size"]))
        writer.add_rope_dimension_count(_head_dim(config))
    if architecture.gguf_name == "gemma2":
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    if full is not None and full.get("rope_type") == "linear":
        import gguf  # Gemma 3 4B and up: the global layers' positions divided by the factor (llama.cpp's freq_scale)

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    if architecture.sliding_period and config.get("sliding_window") is not None:
        writer.add_sliding_window(int(config["sliding_window"]))
    if architecture.gguf_name == "phi3":
        _phi3_hyperparameters(writer, config)


def _phi3_hyperparameters(writer: Any, config: Mapping[str, Any]) -> None:
    """As ``Phi3MiniModel.set_gguf_parameters`` writes them: the rotated width (``partial_rotary_factor``), the
    original context length (past it llama.cpp takes the long RoPE factors), the sliding window (0 for none) and,
    for longrope, the factor transformers scales cos and sin by."""
    rope = {**(config.get("rope_parameters") or {}), **rope_scaling(config)}
    share = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    writer.add_rope_dimension_count(int(_head_dim(config) * share))
    original = rope.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
    writer.add_rope_scaling_orig_ctx_len(int(original or config["max_position_embeddings"]))
    window = int(config.get("sliding_window") or 0)
    writer.add_sliding_window(window)
    if 0 < window < int(config["max_position_embeddings"]):
        logging.getLogger("kbit").warning(
            "llama.cpp runs phi3 without its sliding window: the file computes what the trained model does on up to "
            "%d tokens, and attends further back on longer inputs", window)
    if rope.get("rope_type") == "longrope":
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        _, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](_transformers_config(config))
        writer.add_rope_scaling_attn_factors(float(attention_factor))


def permute_rows(rows: Any, heads: int) -> Any:
    """llama.cpp's ``LlamaModel.permute`` on the first axis (works on weights and on packed block rows)."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_tensor_names(names: list[str], config: Mapping[str, Any], architecture: Architecture) -> Iterator[tuple[str, str]]:
    """``(hf_name, gguf_name)`` for every Hugging Face tensor name that goes into the file, in order."""
    import gguf

    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == architecture.gguf_name)
    table = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", False))
    if not tied and "lm_head.weight" not in names:
        raise ConfigError("the model has untied embeddings but no lm_head.weight; its checkpoint is incomplete")
    for name in names:
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        mapped = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConfigError(f"tensor {name} has no llama.cpp name for architecture {architecture.gguf_name}; "
                              "kbit cannot export this checkpoint")
        yield name, mapped


def row_permutation_heads(hf_name: str, config: Mapping[str, Any], architecture: Architecture) -> int | None:
    """The head count to permute ``hf_name``'s rows by, or None when its rows stay as they are."""
    if not architecture.permute_qk:
        return None
    heads = int(config["num_attention_heads"])
    if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return heads
    if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return int(config.get("num_key_value_heads") or heads)
    return None
