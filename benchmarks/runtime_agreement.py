"""Where llama.cpp's answers differ from the exact float forward of the same GGUF, and what closes the gap.

    python benchmarks/runtime_agreement.py [--gguf FILE] [--items 200] [--flash-attn] [--variants exact,+head]
    python benchmarks/runtime_agreement.py --trace [--gguf FILE] [--layer 3]

FILE (default: the embedded SmolLM2-135M-Instruct Q4_1) runs in llama.cpp through llama-cpp-python on
the CPU as a user runs it (its defaults: f16 KV cache, no flash attention) and in transformers,
dequantized to float32 (``kbit.core.model.sources.load_gguf``), on the held-out prompts + answers of the
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

``--trace`` reads llama.cpp's own intermediate tensors of one held-out item (its graph callback,
``cb_eval``) and prints (1) each linear layer of ``--layer`` recomputed in torch from llama.cpp's own
input to it: float, with the input rounded, and with Q8_1's ``s`` as well (how close the rounding model
is to ggml's kernel); (2) layer 0 op by op, the torch forward with the rounding against llama.cpp's
values (where, and how much, the two forwards part).

For each, against llama.cpp (``kbit.core.measure.agreement``, the figures ``kbit eval FILE.gguf``
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


def llama_cpp_intermediates(gguf_path: Path, ids: list[int]) -> dict[tuple[str, str], Any]:
    """llama.cpp's float32 2-D intermediate tensors of one forward pass over ``ids``, by (name, op), first
    of each, as (tokens, width) torch tensors, read through its graph callback (``cb_eval``)."""
    import ctypes

    import llama_cpp
    import llama_cpp.llama_cpp as api
    import numpy as np
    import torch
    from llama_cpp._ggml import libggml

    class Head(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4)]

    for function, result in (("ggml_get_name", ctypes.c_char_p), ("ggml_op_desc", ctypes.c_char_p),
                             ("ggml_nbytes", ctypes.c_size_t), ("ggml_is_contiguous", ctypes.c_bool)):
        getattr(libggml, function).restype = result
        getattr(libggml, function).argtypes = [ctypes.c_void_p]
    libggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    found: dict[tuple[str, str], Any] = {}

    @api.ggml_backend_sched_eval_callback
    def read(tensor: int, ask: bool, _: int) -> bool:
        if ask:
            return True
        head = ctypes.cast(tensor, ctypes.POINTER(Head)).contents
        key = (libggml.ggml_get_name(tensor).decode(), libggml.ggml_op_desc(tensor).decode())
        if head.type == 0 and head.ne[2] == 1 and libggml.ggml_is_contiguous(tensor) and key not in found:
            data = np.empty(libggml.ggml_nbytes(tensor) // 4, dtype=np.float32)
            libggml.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, data.nbytes)
            found[key] = torch.from_numpy(data).reshape(head.ne[1], head.ne[0])
        return True

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=len(ids) + 8, n_batch=len(ids) + 8, logits_all=True, flash_attn=False,
                          verbose=False)
    params = llm.context_params
    params.cb_eval = read
    llm._ctx = llama_cpp._internals.LlamaContext(model=llm._model, params=params, verbose=False)
    llm.reset()
    llm.eval(ids)
    return found


def trace(gguf_path: Path, model: Any, types: dict[str, str], ids: list[int], layer: int) -> None:
    import torch

    from kbit.core.runtime.rounding import activation_format, q8_1_sums, round_activations

    found = llama_cpp_intermediates(gguf_path, ids)
    block = model.model.layers[layer]
    pairs = [("attn_norm", "MUL", block.self_attn.v_proj, "Vcur"), ("kqv_out", "CONT", block.self_attn.o_proj, "attn_out"),
             ("ffn_norm", "MUL", block.mlp.gate_proj, "ffn_gate"), ("ffn_norm", "MUL", block.mlp.up_proj, "ffn_up"),
             ("ffn_swiglu", "SWIGLU", block.mlp.down_proj, "ffn_out")]
    print(f"(1) layer {layer}'s linears from llama.cpp's own inputs, max |torch - llama.cpp| ({len(ids)} tokens)")
    print(f"{'output':<12} {'max |y|':>8} {'float input':>12} {'rounded':>10} {'rounded + s':>12}")
    for source, op, linear, target in pairs:
        x, y = found[(f"{source}-{layer}", op)], found[(f"{target}-{layer}", "MUL_MAT")]
        weight = linear.weight.detach().float()
        fmt = activation_format(types[gguf_name(_module_name(model, linear))])
        rounded = round_activations(x, fmt) @ weight.t()
        with_s = rounded
        if fmt == "q8_1":
            offsets = weight.reshape(weight.shape[0], -1, 32).amin(-1)
            block_sums = round_activations(x, fmt).reshape(*x.shape[:-1], -1, 32).sum(-1)
            with_s = rounded + (q8_1_sums(x) - block_sums) @ offsets.t()
        print(f"{target:<12} {y.abs().max():>8.3g} {(x @ weight.t() - y).abs().max():>12.3g} "
              f"{(rounded - y).abs().max():>10.3g} {(with_s - y).abs().max():>12.3g}")
    got: dict[str, Any] = {}
    first = model.model.layers[0]

    def keep(name: str, inputs: bool = False) -> Any:
        def hook(module: Any, args: Any, out: Any = None) -> None:
            value = args[0] if inputs else (out[0] if isinstance(out, tuple) else out)
            got[name] = value[0].detach().clone()
        return hook

    handles = [first.input_layernorm.register_forward_hook(keep("attn_norm-0/MUL")),
               first.self_attn.v_proj.register_forward_hook(keep("Vcur-0/MUL_MAT")),
               first.self_attn.o_proj.register_forward_pre_hook(keep("kqv_out-0/CONT", inputs=True)),
               first.self_attn.o_proj.register_forward_hook(keep("attn_out-0/MUL_MAT")),
               first.post_attention_layernorm.register_forward_hook(keep("ffn_norm-0/MUL")),
               first.mlp.down_proj.register_forward_pre_hook(keep("ffn_swiglu-0/SWIGLU", inputs=True)),
               first.mlp.register_forward_hook(keep("ffn_out-0/MUL_MAT"))]
    residual: dict[str, list[float]] = {}
    for label in ("exact", "rounded"):
        outputs: list[Any] = []
        hooks = [layer_module.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
                 for layer_module in model.model.layers]
        if label == "rounded":
            hooks += handles + round_linears(model, types, exact_s=True)
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        for handle in hooks:
            handle.remove()
        residual[label] = [float((out[0] - found[(f"l_out-{i}", "ADD")]).abs().max()) for i, out in enumerate(outputs)]
    print("(2) layer 0 op by op: torch with the rounding (and s) against llama.cpp")
    print(f"{'tensor':<20} {'max |llama.cpp|':>15} {'max |Δ|':>9} {'mean |Δ|':>9}")
    for name, value in got.items():
        reference = found[tuple(name.split("/"))]
        difference = (value - reference).abs()
        print(f"{name:<20} {reference.abs().max():>15.3g} {difference.max():>9.3g} {difference.mean():>9.3g}")
    print("(3) the residual stream after each layer, max |torch - llama.cpp| (first row: max |llama.cpp|)")
    residual = {"llama.cpp": [float(found[(f"l_out-{i}", "ADD")].abs().max()) for i in range(len(model.model.layers))],
                **residual}
    for label, values in residual.items():
        print(f"{label:<8} " + " ".join(f"{v:.3g}" for v in values))


def _module_name(model: Any, module: Any) -> str:
    return next(name for name, m in model.named_modules() if m is module)


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
    parser.add_argument("--trace", action="store_true", help="compare llama.cpp's intermediate tensors of one item")
    parser.add_argument("--layer", type=int, default=3, help="with --trace: the layer whose linears are recomputed")
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    from kbit.core.data import load_task_data
    from kbit.core.measure.agreement import agreement
    from kbit.core.measure.metrics import encode_example
    from kbit.core.evaluate.reference import answer_mask
    from kbit.core.model.sources import default_gguf_path, load_gguf

    torch.manual_seed(0)
    gguf_path = args.gguf or default_gguf_path()
    types = tensor_types(gguf_path)
    model, tokenizer = load_gguf(gguf_path)
    model.eval()
    encoded = [encode_example(tokenizer, e) for e in load_task_data(None, held_out=args.items).held_out]
    sequences = [ids for ids, _ in encoded]
    masks = [answer_mask(len(ids), prompt) for ids, prompt in encoded]
    if args.trace:
        model.set_attn_implementation("eager")
        trace(gguf_path, model, types, sequences[0], args.layer)
        return
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
