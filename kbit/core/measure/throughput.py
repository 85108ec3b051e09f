"""How fast a run trained: tokens per second and the matrix-product FLOPs its steps did.

The FLOP count is that of the matrix products a training step of an adapter on a frozen base needs,
counted from the model and the tokens the steps saw (not from a profiler, so it costs nothing per step):

- each frozen linear weight of the body (a 4-bit or otherwise quantized one counts as its float
  shape): 2 FLOPs per weight and token forward, 2 for the gradient of its input; no weight gradient;
- each trainable (adapter) parameter: 2 forward, 2 for the input gradient, 2 for its own gradient;
- the output head (vocabulary × hidden), on the positions it is computed on (only the labelled ones
  where kbit's loss scores those alone): forward and input gradient;
- attention's two products (scores and weighted values) per layer, causal, per example of length L:
  2 · width · L(L+1) forward, twice that backward;
- activation checkpointing computes the forward of the body once more.

Embedding look-ups, norms, activations, dequantization and the optimizer are not matrix products
and are not counted: they are time the steps spend, not work the count credits, which is what
makes ``mfu`` (achieved FLOP/s over the machine's measured matmul peak) an honest utilisation.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ModelShape:
    """The sizes of a model that its training FLOPs depend on."""

    frozen_linear_weights: int  # weights of the body's frozen linear layers (head excluded)
    trainable_parameters: int
    head_weights: int  # vocabulary × hidden of the output layer
    head_trainable: bool  # the adapter trains the output layer too (it then also gets a weight gradient)
    layers: int
    attention_width: int  # heads × head size (the width queries and keys are compared in)


def model_shape(model: Any) -> ModelShape:
    """The shape of ``model`` (a transformers model or a PEFT model around one) for ``step_flops``."""
    output = model.get_output_embeddings()
    head = _linear_weights(output) if output is not None else 0
    frozen = 0
    for module in model.modules():
        if module is output or not _is_leaf_linear(module):
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and getattr(weight, "requires_grad", False):
            continue  # an adapter's matrix: counted with the trainable parameters
        frozen += _linear_weights(module)
    head_parameters = {id(p) for p in output.parameters()} if output is not None else set()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in head_parameters)
    head_trainable = output is not None and any(p.requires_grad for p in output.parameters())
    layers, heads, _, head_dim = attention_geometry(model.config)
    return ModelShape(frozen_linear_weights=frozen, trainable_parameters=trainable, head_weights=head, head_trainable=head_trainable,
                      layers=layers, attention_width=heads * head_dim)


def attention_geometry(config: Any) -> tuple[int, int, int, int]:
    """Layers, query heads, key/value heads and head size of a transformers config (its text part); 0 where unknown."""
    text = getattr(config, "get_text_config", lambda: config)()
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    head_dim = int(getattr(text, "head_dim", None) or (int(getattr(text, "hidden_size", 0)) // heads if heads else 0))
    return (int(getattr(text, "num_hidden_layers", 0) or 0), heads,
            int(getattr(text, "num_key_value_heads", None) or heads), head_dim)


def _is_leaf_linear(module: Any) -> bool:
    """A layer computing one matrix product: it has in/out features and no sub-layer that has them
    (a PEFT LoRA layer wraps its base layer and its A and B matrices, which are counted instead)."""
    if not _has_features(module):
        return False
    return not any(_has_features(child) for child in module.modules() if child is not module)


def _has_features(module: Any) -> bool:
    return isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int)


def _linear_weights(module: Any) -> int:
    if _has_features(module):
        return module.in_features * module.out_features
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if weight is not None else 0


@attrs.frozen
class StepWork:
    """What the training steps of a run processed, summed over the steps."""

    tokens: int  # real tokens (padding excluded)
    head_positions: int  # positions the output head was computed on
    attention_pairs: int  # sum over examples of L(L+1): causal query-key pairs, doubled
    checkpointing: bool


def batch_work(inputs: dict[str, Any], labelled_head: bool) -> tuple[Any, Any, Any]:
    """Real tokens, head positions and attention pairs (``StepWork``'s fields) of one micro-batch, as
    tensors on its device (summed there; read once at the end, so no step waits on a transfer).

    A padded batch holds one example per row (its mask's sum is its length); a padding-free one is a
    single row whose ``position_ids`` restart at 0 where each example starts. ``labelled_head``: the
    head is computed only where a label is scored (kbit's loss), else on every real token.
    """
    import torch

    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is not None:
        lengths = mask.sum(dim=1)
    else:
        positions = inputs.get("position_ids")
        if positions is None:
            lengths = torch.full((ids.size(0),), ids.size(1), device=ids.device)
        else:
            starts = torch.nonzero(positions.reshape(-1) == 0).reshape(-1)
            ends = torch.cat([starts[1:], torch.tensor([positions.numel()], device=starts.device)])
            lengths = ends - starts
    tokens = lengths.sum()
    labels = inputs.get("labels")
    head = (labels[:, 1:] != -100).sum() if labelled_head and labels is not None else tokens
    return tokens, head, (lengths * (lengths + 1)).sum()


def step_flops(shape: ModelShape, work: StepWork) -> float:
    """The matrix-product FLOPs of training steps that processed ``work`` (see the module docstring)."""
    forwards = 2 if work.checkpointing else 1
    body = 2 * shape.frozen_linear_weights * (forwards + 1) + 2 * shape.trainable_parameters * (forwards + 2)
    attention = 2 * shape.attention_width * shape.layers * work.attention_pairs * (forwards + 2)
    head = (6 if shape.head_trainable else 4) * shape.head_weights * work.head_positions
    return float(body * work.tokens + attention + head)


def speed_figures(shape: ModelShape, work: StepWork, step_seconds: float,
                  peak_gflops: float | None) -> dict[str, Any]:
    """What a run records about its speed: tokens/s and achieved GFLOP/s over the time spent in
    training steps, and ``mfu``, that over ``peak_gflops`` (None when no peak was measured)."""
    if step_seconds <= 0 or work.tokens <= 0:
        return {}
    flops = step_flops(shape, work)
    achieved = flops / step_seconds / 1e9
    return {
        "step_seconds": round(step_seconds, 3),
        "tokens_per_s": round(work.tokens / step_seconds, 1),
        "flop_per_token": round(flops / work.tokens),
        "achieved_gflops": round(achieved, 1),
        "peak_gflops": None if peak_gflops is None else round(peak_gflops, 1),
        "mfu": None if not peak_gflops else round(achieved / peak_gflops, 3),
    }
