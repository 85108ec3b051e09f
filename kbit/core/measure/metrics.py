"""Evaluation metrics: held-out completion loss, task scores, memory footprint, bits per weight.

- Loss is the mean cross-entropy over completion tokens only, as trained: the text is the chat
  prompt (``render_prompt``) + completion + EOS, with the prompt tokens masked. It is averaged over
  all completion tokens of all examples; perplexity is ``exp(loss)``.
- Memory footprint counts every parameter and buffer once as stored (packed 4-bit data included),
  plus quantization state held outside them (bitsandbytes absmax, code, nested state, int8 SCB).
- Bits per weight covers the linear layers a quantizer targets: storage bits of each layer's weight
  (with its scales and quantization state) over its logical ``in_features * out_features``. Adapter
  layers and the output head are left out: adapters are not base weights and most methods keep the
  head in full precision. An unquantized fp32 model gives 32; NF4 with double quantization ≈ 4.127. A
  compressed-tensors checkpoint's layers (gptq, awq), decompressed when transformers loads them on a CPU,
  count as the checkpoint stores them (``checkpoint_packed_bits``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kbit.core.data.examples import Example
from kbit.core.measure.budget import context_length, cut_for_tokens
from kbit.core.measure.generation import render_prompt
from kbit.core.measure.sample_size import exact_match_stats
from kbit.core.measure.scoring import score

ADAPTER_MARKERS = ("lora_", "vera_", "modules_to_save")
LOGITS_BYTES = 2**30  # the most float32 logits one batch of completion_loss holds (a row of the whole context may pass it)


def example_text(tokenizer: Any, example: Example, limit: int | None = None) -> tuple[str, str]:
    """The chat prompt and the whole text (prompt + completion + EOS) as trained; with ``limit`` (tokens)
    the completion is cut to what ``limit`` tokens can hold (see ``encode_example``)."""
    prompt = render_prompt(tokenizer, example)
    completion = example.completion if limit is None else cut_for_tokens(example.completion, limit)
    return prompt, prompt + completion + (tokenizer.eos_token or "")


def encode_example(tokenizer: Any, example: Example, limit: int | None = None) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS and how many leading ids are the prompt; at most ``limit``
    ids (the model's context: a longer held-out answer is scored on its beginning, as training cuts it)."""
    prompt, full = example_text(tokenizer, example, limit)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:limit]
    shared = 0  # a tokenizer may merge across the boundary: mask the common prefix only
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        shared += 1
    return list(full_ids), shared


def context_cut(sequences: Sequence[tuple[list[int], int]], limit: int | None) -> dict[str, Any]:
    """``completion_loss``'s ``context`` and ``cut_to_context`` of ``encode_example``'s ``sequences``: how many
    reach the model's context ``limit``, so are scored on their first ``limit`` tokens."""
    return {"context": limit, "cut_to_context": sum(1 for ids, _ in sequences if limit is not None and len(ids) >= limit)}


def completion_loss(model: Any, tokenizer: Any, examples: Sequence[Example], batch_size: int = 8) -> dict[str, Any]:
    """Token-weighted mean completion loss, perplexity, completion token count (``tokens``), every
    token read (``input_tokens``: prompts and completions), per-example mean losses and ``context_cut``'s
    figures; each example read up to the model's context."""
    import torch

    config = getattr(model, "config", None)
    limit = context_length(config)
    encoded = [encode_example(tokenizer, e, limit) for e in examples]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_example: list[float] = []
    total, tokens = 0.0, 0
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    begin = 0
    with torch.no_grad():
        while begin < len(encoded):
            size = batch_size
            # a batch's float32 logits held within LOGITS_BYTES: fewer rows where answers run long
            while size > 1 and size * max(len(ids) for ids, _ in encoded[begin : begin + size]) * vocab * 4 > LOGITS_BYTES:
                size //= 2
            chunk, begin = encoded[begin : begin + size], begin + size
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, (ids, prompt_len) in enumerate(chunk):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            shifted, targets = logits[:, :-1], labels[:, 1:].to(device)
            losses = torch.nn.functional.cross_entropy(
                shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
            ).view(targets.shape)
            mask = targets != -100
            for row in range(len(chunk)):
                count = int(mask[row].sum())
                row_sum = float(losses[row][mask[row]].sum())
                per_example.append(row_sum / count if count else float("nan"))
                total += row_sum
                tokens += count
    loss = total / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens and loss < 700 else float("inf"),
            "tokens": tokens, "input_tokens": sum(len(ids) for ids, _ in encoded), "per_example": per_example,
            **context_cut(encoded, limit)}


def task_scores(task: str, predictions: Sequence[str], examples: Sequence[Example]) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Per-example scores and their means (``exact_match``, plus ``f1`` for squad) with
    ``exact_match_hits`` and ``exact_match_ci95``: every held-out score kbit prints (``kbit train``'s
    before/after and variants, ``kbit eval``'s rows) is this function of greedy answers."""
    per = [score(task, p, list(e.answers)) for p, e in zip(predictions, examples)]
    if not per:
        return [], {}
    means: dict[str, Any] = {key: sum(s[key] for s in per) / len(per) for key in per[0]}
    return per, {**means, **exact_match_stats([s["exact_match"] for s in per])}


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor occupies as stored; tensor subclasses (torchao) are summed over their inner tensors."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor).__name__ not in ("Parameter", "Tensor", "Params4bit", "Int8Params"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def quant_state_tensors(weight: Any) -> list[Any]:
    """Tensors of a bitsandbytes weight's quantization state (absmax, code, nested state, SCB), if any."""
    import torch

    found: list[Any] = []
    state = getattr(weight, "quant_state", None)
    while state is not None:
        found += [t for t in (getattr(state, "absmax", None), getattr(state, "code", None), getattr(state, "offset", None))
                  if isinstance(t, torch.Tensor)]
        state = getattr(state, "state2", None) if getattr(state, "nested", False) else None
    scb = getattr(weight, "SCB", None)
    if isinstance(scb, torch.Tensor):
        found.append(scb)
    return found


def layer_state_tensors(module: Any) -> list[Any]:
    """Tensors a layer keeps outside its parameters and buffers: bitsandbytes' ``Linear8bitLt`` moves its row
    scales (``SCB``) from the weight to ``module.state`` at its first forward pass."""
    import torch

    scb = getattr(getattr(module, "state", None), "SCB", None)
    return [scb] if isinstance(scb, torch.Tensor) else []


def memory_footprint(model: Any) -> int:
    """Bytes of every parameter and buffer (each storage once) plus quantization state."""
    seen: set[int] = set()
    total = 0
    layer_state = [t for module in model.modules() for t in layer_state_tensors(module)]
    for tensor in [*model.parameters(), *model.buffers(), *layer_state]:
        for part in [tensor, *quant_state_tensors(tensor)]:
            key = id(part) if part.device.type == "meta" else part.data_ptr() or id(part)
            if key in seen:
                continue
            seen.add(key)
            total += tensor_bytes(part)
    return total


def linear_weight_bits(model: Any, stored: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Storage bits per logical weight over the model's base linear layers (see module docs); ``stored`` (from
    ``checkpoint_packed_bits``) gives, by layer name, what the checkpoint holds for a layer decompressed on load."""
    stored = stored or {}
    bits, weights = 0, 0
    for name, module in base_linears(model, named=True):
        layer_bits, logical = stored.get(name) or _stored_bits(module)
        bits += layer_bits
        weights += logical
    return {"bits_per_weight": bits / weights if weights else None, "linear_weights": weights}


def gguf_linear_bits(path: str | Path) -> dict[str, Any]:
    """``linear_weight_bits`` of a GGUF file, from its tensor table: the bits its block layers' weight matrices
    (``blk.N.*.weight``, two dimensions or more) store, block scales included, per weight. The output head and the
    embeddings are left out, as for a loaded model."""
    from gguf import GGUFReader

    bits, weights = 0, 0
    for tensor in GGUFReader(str(path)).tensors:
        if tensor.name.startswith("blk.") and tensor.name.endswith(".weight") and len(tensor.shape) >= 2:
            bits += 8 * int(tensor.n_bytes)
            weights += int(tensor.n_elements)
    return {"bits_per_weight": bits / weights if weights else None, "linear_weights": weights}


SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                     "F8_E4M3": 1, "F8_E5M2": 1}


def checkpoint_packed_bits(folder: Path) -> dict[str, tuple[int, int]]:
    """By layer name, the bits a compressed-tensors checkpoint (GPTQ/AWQ packed codes: ``weight_packed``,
    ``weight_scale``, ``weight_zero_point``, ``weight_g_idx``) stores for a layer's weight and its logical
    weight count (``weight_shape``), read from the safetensors files. transformers decompresses these layers
    when it loads them on a CPU, so the loaded model no longer shows what the file stores. {} for any other
    folder."""
    from safetensors import safe_open

    stored: dict[str, int] = {}
    logical: dict[str, int] = {}
    packed: set[str] = set()
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            for key in handle.keys():
                layer, _, leaf = key.rpartition(".")
                if leaf == "weight_shape":
                    logical[layer] = math.prod(int(v) for v in handle.get_tensor(key).tolist())
                elif leaf.startswith("weight_"):
                    part = handle.get_slice(key)
                    size = math.prod(part.get_shape()) * SAFETENSORS_BYTES.get(part.get_dtype(), 4)
                    stored[layer] = stored.get(layer, 0) + size
                    if leaf == "weight_packed":
                        packed.add(layer)
    return {layer: (8 * stored[layer], logical[layer]) for layer in packed if layer in logical}


def float_linears(model: Any) -> tuple[int, int]:
    """How many of the model's base linear layers store 16 or more bits per weight (plain floats: nothing
    quantized them), and how many there are."""
    layers = [_stored_bits(module) for module in base_linears(model)]
    return sum(1 for bits, logical in layers if logical and bits / logical >= 16), len(layers)


def base_linears(model: Any, named: bool = False) -> list[Any]:
    """The model's base linear layers: torch ``Linear`` (quantized subclasses included) and transformers'
    ``Conv1D`` (GPT-2's), without the output head and adapter layers; ``named``: (name, layer) pairs."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(name, module) if named else module for name, module in model.named_modules()
            if (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D") and module is not head
            and not any(m in name for m in ADAPTER_MARKERS)
            and (module._parameters.get("weight") is not None or module._buffers)]


def _stored_bits(module: Any) -> tuple[int, int]:
    """Bits a layer stores for its weight (codes, scales, quantization state) and its logical weight count."""
    # A QuantizedLinear's ``weight`` is computed from its buffers on access: count only the buffers (and
    # never compute it here).
    weight = module._parameters.get("weight")
    state = quant_state_tensors(weight) if weight is not None else []
    state += [t for t in layer_state_tensors(module) if all(t is not other for other in state)]
    stored = (tensor_bytes(weight) if weight is not None else 0) + sum(tensor_bytes(t) for t in state)
    for extra_name, extra in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
        if extra is not weight and extra_name != "bias":
            stored += tensor_bytes(extra)  # scales / zero points of other quantized formats
    return 8 * stored, _logical_elements(module, weight)


def _logical_elements(module: Any, weight: Any) -> int:
    if getattr(module, "in_features", None) and getattr(module, "out_features", None):
        return int(module.in_features) * int(module.out_features)
    weight = module.weight if weight is None else weight
    state = getattr(weight, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape)
    return weight.numel()
