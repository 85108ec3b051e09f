"""Where llama.cpp's answers differ from the exact float forward of the same GGUF, and what closes the gap.

    python benchmarks/runtime_agreement.py [--gguf FILE] [--items 200] [--flash-attn] [--variants exact,+head]

FILE (default: the embedded SmolLM2-135M-Instruct Q4_1) runs in llama.cpp through llama-cpp-python on
the CPU as a user runs it (its defaults: f16 KV cache, no flash attention) and in transformers,
dequantized to float32 (``kbit.core.models.load_gguf``), on the held-out prompts + answers of the
default task. Each transformers variant adds one piece of what llama.cpp's CPU backend rounds
(``kbit.core.runtime.rounding``):

- ``exact``: the float forward of the file's weights;
- ``+linears``: each linear layer's input rounded to its weight type's ``vec_dot_type`` (q4_1 → q8_1);
- ``+q8_1 s``: the same, and each block offset ``m`` multiplied by Q8_1's stored ``s`` instead of the
  block sum of the rounded input (exactly what ``ggml_vec_dot_q4_1_q8_1`` computes);
- ``+head``: the output head's input rounded to its weight type's format (q8_0 → q8_0);
- ``+linears +head``: both, with Q8_1's ``s``;
- ``+attention f16``: Q, K, V and the softmax weights rounded to float16 (the f16 KV cache, and
  ggml's f16 matmuls converting Q and the weights to float16);
- ``all``: every piece.

For each, against llama.cpp (``kbit.core.evaluate.agreement``, the figures ``kbit eval FILE.gguf``
reports): top-1 agreement on answer positions (where the next token is an answer token or the EOS:
what greedy answers depend on), mean KL(llama.cpp ‖ variant) on answer positions, and the largest
|Δlogit|.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {"exact": (), "+linears": ("linears",), "+q8_1 s": ("linears", "s"), "+head": ("head",),
            "+linears +head": ("linears", "s", "head"), "+attention f16": ("attention",),
            "all": ("linears", "s", "head", "attention")}
LINEAR_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def tensor_types(gguf_path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(str(gguf_path)).tensors}


def gguf_name(module_name: str) -> str:
    """``model.layers.3.mlp.up_proj`` → ``blk.3.ffn_up.weight``."""
    parts = module_name.split(".")
    layer = parts[parts.index("layers") + 1]
    return f"blk.{layer}.{LINEAR_NAMES[parts[-1]]}.weight"


def llama_cpp_logits(gguf_path: Path, sequences: list[list[int]], flash_attn: bool) -> list[Any]:
    import llama_cpp
    import numpy as np
    import torch

    context = max(len(s) for s in sequences) + 8
    llm = llama_cpp.Llama(str(gguf_path), logits_all=True, n_ctx=context, n_batch=context, flash_attn=flash_attn,
                          verbose=False)
    logits = []
    for ids in sequences:
        llm.reset()
        llm.eval(ids)
        logits.append(torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32)))
    return logits


def f16_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                  dropout: float = 0.0, **kwargs: Any) -> tuple[Any, Any]:
    """transformers' eager attention with llama.cpp's float16 roundings (no flash attention): K and V
    as the f16 cache holds them, Q converted to f16 for the K·Q matmul, the softmax weights to f16
    for the V matmul."""
    import torch
    from transformers.models.llama.modeling_llama import repeat_kv

    def half(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float16).to(t.dtype)

    key, value = repeat_kv(half(key), module.num_key_value_groups), repeat_kv(half(value), module.num_key_value_groups)
    weights = torch.matmul(half(query), key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = half(torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype))
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def round_linears(model: Any, types: dict[str, str], exact_s: bool) -> list[Any]:
    """Forward pre-hooks rounding each decoder linear's input to its weight type's format; with
    ``exact_s``, q8_1 layers also get Q8_1's ``s`` in the offset term."""
    import torch

    from kbit.core.runtime.rounding import (
        activation_format,
        fake_quantize_activations,
        q8_1_sums,
    )

    handles = []
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.Linear) and name.split(".")[-1] in LINEAR_NAMES):
            continue
        fmt = activation_format(types[gguf_name(name)])
        if fmt is None:
            continue
        def rounded_input(mod: Any, args: Any, fmt: str = fmt) -> tuple[Any]:
            mod.unrounded_input = args[0]
            return (fake_quantize_activations(args[0], fmt),)

        handles.append(module.register_forward_pre_hook(rounded_input))
        if exact_s and fmt == "q8_1":
            # Q4_1's w = d·q + m with m the block minimum; ggml multiplies m by s, not by Σ rounded x.
            offsets = module.weight.detach().reshape(module.out_features, -1, 32).amin(dim=-1)

            def add_s(mod: Any, args: Any, out: Any, offsets: Any = offsets) -> Any:
                x, rounded = mod.unrounded_input, args[0]
                block_sums = rounded.reshape(*x.shape[:-1], -1, 32).sum(dim=-1)
                return out + (q8_1_sums(x) - block_sums) @ offsets.t()

            handles.append(module.register_forward_hook(add_s))
    return handles


def round_head(model: Any, types: dict[str, str]) -> list[Any]:
    from kbit.core.runtime.rounding import activation_format, fake_quantize_activations

    fmt = activation_format(types.get("output.weight", types["token_embd.weight"]))
    if fmt is None:
        return []
    head = model.get_output_embeddings()
    return [head.register_forward_pre_hook(lambda mod, args: (fake_quantize_activations(args[0], fmt),))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the embedded SmolLM2 Q4_1)")
    parser.add_argument("--items", type=int, default=200, help="held-out items of the default task")
    parser.add_argument("--flash-attn", action="store_true", help="llama.cpp with flash attention")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from kbit.core.data import load_task_data
    from kbit.core.evaluate.agreement import agreement
    from kbit.core.evaluate.metrics import encode_example
    from kbit.core.evaluate.reference import answer_mask
    from kbit.core.models import default_gguf_path, load_gguf

    torch.manual_seed(0)
    gguf_path = args.gguf or default_gguf_path()
    types = tensor_types(gguf_path)
    model, tokenizer = load_gguf(gguf_path)
    model.eval()
    encoded = [encode_example(tokenizer, e) for e in load_task_data(None, held_out=args.items).held_out]
    sequences = [ids for ids, _ in encoded]
    masks = [answer_mask(len(ids), prompt) for ids, prompt in encoded]
    reference = llama_cpp_logits(gguf_path, sequences, args.flash_attn)

    AttentionInterface.register("llama_cpp_f16", f16_attention)
    AttentionMaskInterface.register("llama_cpp_f16", eager_mask)  # an additive float mask, as eager attention takes
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    print(f"{gguf_path.name}: {len(sequences)} held-out items, llama.cpp {'with' if args.flash_attn else 'without'} "
          "flash attention; transformers variants against llama.cpp")
    print(f"{'variant':<16} {'top-1 answers':>14} {'answer KL':>10} {'max |Δlogit|':>13}")
    for label, pieces in variants.items():
        handles = []
        if "linears" in pieces:
            handles += round_linears(model, types, exact_s="s" in pieces)
        if "head" in pieces:
            handles += round_head(model, types)
        model.set_attn_implementation("llama_cpp_f16" if "attention" in pieces else "eager")
        with torch.no_grad():
            logits = [model(input_ids=torch.tensor([ids])).logits[0].float() for ids in sequences]
        for handle in handles:
            handle.remove()
        figures = agreement(zip(reference, logits, masks))
        print(f"{label:<16} {figures.answer_top1:>13.2%} {figures.answer_kl:>10.2e} "
              f"{figures.max_abs_logit_diff:>13.3f}   ({figures.answer_positions} answer positions)", flush=True)


if __name__ == "__main__":
    main()
