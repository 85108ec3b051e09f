"""Write a PEFT LoRA adapter as a llama.cpp LoRA GGUF, applied at run time to the unchanged base GGUF
(``llama-cli -m base.gguf --lora adapter.gguf``, ``llama_cpp.Llama(model_path=..., lora_path=...)``).

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes and what ``src/llama-adapter.cpp``
checks on load (llama.cpp as vendored in llama-cpp-python 0.3.36):

- keys: ``general.architecture`` (the base file's: llama.cpp refuses a mismatch), ``general.type`` =
  ``adapter``, ``adapter.type`` = ``lora``, ``adapter.lora.alpha`` (float32), ``general.name`` and
  the base model, ``general.quantization_version``; no hyperparameters and no tokenizer.
- tensors: ``<base tensor>.lora_a`` holds PEFT's ``lora_A`` (r × in) and ``<base tensor>.lora_b``
  its ``lora_B`` (out × r), as PEFT stores them; llama.cpp adds ``alpha / r · B (A x)`` to the base
  product, reading ``r`` per tensor from ``lora_b`` (so a ``rank_pattern`` needs nothing special).
- Llama's q/k rows are permuted in the base file (:mod:`kbit.core.export.architectures`), so
  ``lora_b`` gets the same row permutation; ``lora_a`` acts on the input side and stays.
- token embeddings (``lora_embedding_A``/``_B``): llama.cpp looks rows up in ``lora_a``, so it is
  written transposed (vocab × r), as the converter does.
- tensor types: f32 (the converter's default), f16, bf16 or q8_0, where a row width that is not a
  multiple of 32 (``lora_b``'s width is r) falls back to F16, as the converter does.

Where kbit differs from the converter: for rsLoRA (PEFT scale ``alpha / sqrt(r)``) the converter
writes ``lora_alpha`` as is, so llama.cpp applies ``alpha / r``; kbit writes ``alpha · sqrt(r)``,
which gives PEFT's scale. Names and row order come from the base GGUF itself (its architecture, block
and head counts, tensor names and shapes), since that file is what the adapter is applied to; a
config.json could describe another conversion of the model.

Refused in one line, before anything is written: adapters llama.cpp cannot apply as they were
trained (non-LoRA PEFT types, DoRA, trained biases or ``lora_bias``, ``modules_to_save``, trainable
tokens, QALoRA, aLoRA, layer replication, parameter targets, per-module alphas or an rsLoRA rank
pattern that one ``adapter.lora.alpha`` cannot express, alpha 0, which llama.cpp reads as scale 1),
LoRA on embeddings or ``lm_head`` in a base with tied embeddings (llama.cpp would apply the embedding
LoRA to its output product too and has no ``output.weight`` for ``lm_head``), and an adapter whose
modules or shapes the base file does not have. For all of these the merged model is the way out.

kbit writes this itself rather than running ``convert_lora_to_gguf.py``: that script ships with
llama.cpp's source only (neither the gguf package nor llama-cpp-python's wheel carries it), needs the
base's Hugging Face config folder or the Hub, and mis-scales rsLoRA. The format pieces (writer, key
names, tensor-name map, quantization) are gguf-py's.

:func:`apply_lora_gguf` reads such a file back (kbit's or the converter's) onto the transformers model of
its base GGUF, as PEFT LoRA layers computing what llama.cpp computes, so a LoRA GGUF can be checked
without llama.cpp. PEFT's LoRA layers are that computation already (``x W^T + s · B (A x)``, embeddings
looked up in ``A``); only the names, row order and scale are llama.cpp's, and they are undone here.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from kbit.core.errors import ConfigError
from kbit.core.export.architectures import (
    SUPPORTED,
    by_gguf_name,
    gguf_tensor_names,
    permute_rows,
    row_permutation_heads,
)
from kbit.core.export.gguf import BaseModel
from kbit.core.model.gguf_tensors import unpermute_rows

LORA_FILE_TYPES = ("f32", "f16", "bf16", "q8_0")
MERGED_FIX = "export the merged model instead (kbit export RUN)"
_PEFT_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)")


@attrs.frozen
class _BaseFile:
    """What the base GGUF says that the adapter must agree with: architecture, counts, tensor shapes (ggml order)."""

    path: Path
    architecture: str
    blocks: int
    heads: int
    kv_heads: int
    shapes: Mapping[str, tuple[int, ...]]
    general: Mapping[str, Any]

    @property
    def tied(self) -> bool:
        return "output.weight" not in self.shapes


@attrs.frozen
class _Pair:
    hf_name: str  # the base weight's Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight
    a: Any  # torch float32, PEFT's orientation
    b: Any
    embedding: bool


def write_lora_gguf(adapter_dir: Path, base_gguf: Path, target: Path, *, name: str, file_type: str = "f32",
                    base_model: BaseModel | None = None) -> dict[str, Any]:
    """Write the PEFT LoRA in ``adapter_dir`` as a llama.cpp LoRA GGUF at ``target`` for ``base_gguf``.

    ``adapter_dir``: PEFT's folder (``adapter_config.json`` + ``adapter_model.safetensors``), e.g. a
    run's ``adapter/``. ``base_gguf``: the GGUF file the adapter will be applied to; it must hold the
    same weights' shapes as the model the adapter was trained on. ``name``: ``general.name``.
    ``file_type``: one of :data:`LORA_FILE_TYPES`. ``base_model``: what the file says about the base
    model (``general.base_model.0.*`` and license, as for ``write_gguf``); None: the base file's own
    name, organization and license.

    Returns a report: ``alpha`` written, ``scales`` (rank → the PEFT scale that alpha reproduces for
    it), ``modules`` (count of adapted base tensors), ``tensor_types`` (count per GGML type),
    ``fallbacks``. Raises ConfigError, with nothing written, for anything llama.cpp cannot apply as
    trained. ``target`` is written in place: a caller that needs atomicity writes to a temporary
    sibling and renames it.
    """
    import gguf

    adapter_dir, base_gguf = Path(adapter_dir), Path(base_gguf)
    if file_type not in LORA_FILE_TYPES:
        raise ConfigError(f"unknown LoRA GGUF type '{file_type}'; choose from {', '.join(LORA_FILE_TYPES)}")
    config = _adapter_config(adapter_dir)
    base = _read_base(base_gguf)
    pairs = _pairs(adapter_dir)
    ranks = sorted({int(pair.a.shape[0]) for pair in pairs})
    alpha, scales = _gguf_alpha(config, ranks, adapter_dir)

    writer = gguf.GGUFWriter(path=None, arch=base.architecture)
    counts: Counter[str] = Counter()
    fallbacks: list[str] = []
    for tensor_name, array in _tensors(pairs, base):
        data, qtype = _quantize(array, file_type, tensor_name, fallbacks)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        counts[qtype.name] += 1
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    _metadata(name, base, base_model).set_gguf_meta_model(writer)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file(path=Path(target))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"alpha": alpha, "scales": scales, "modules": len(pairs),
            "tensor_types": dict(sorted(counts.items())), "fallbacks": fallbacks}


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """``adapter_config.json``, refused where llama.cpp cannot apply what PEFT trained."""
    config_file, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise ConfigError(f"{adapter_dir} is not a PEFT adapter folder (adapter_config.json and adapter_model.safetensors); "
                          "pass a run's adapter/ folder")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    where = str(config_file)
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise ConfigError(f"{where}: llama.cpp applies LoRA adapters only, this one is {peft_type or 'unknown'}; {MERGED_FIX}")
    refusals = (
        ("use_dora", "DoRA's magnitude vectors have no llama.cpp equivalent"),
        ("modules_to_save", f"fully trained modules ({config.get('modules_to_save')}) are not part of a llama.cpp LoRA"),
        ("trainable_token_indices", "trained token embeddings are not part of a llama.cpp LoRA"),
        ("lora_bias", "llama.cpp's LoRA has no bias on lora_B"),
        ("use_qalora", "QALoRA pools the input before lora_A, which llama.cpp does not"),
        ("alora_invocation_tokens", "kbit does not write activated LoRA (aLoRA) files"),
        ("layer_replication", "layer replication changes the base's layers"),
        ("target_parameters", "LoRA on raw parameters has no llama.cpp tensor pairs"),
        ("fan_in_fan_out", "transposed (Conv1D) LoRA weights are not written by kbit"),
    )
    for key, reason in refusals:
        if config.get(key):
            raise ConfigError(f"{where}: {key} is set: {reason}; {MERGED_FIX}")
    if config.get("bias", "none") != "none":
        raise ConfigError(f"{where}: bias='{config['bias']}' trains the base's biases, which a llama.cpp LoRA cannot carry; {MERGED_FIX}")
    alpha = float(config["lora_alpha"])
    differing = sorted(k for k, v in (config.get("alpha_pattern") or {}).items() if float(v) != alpha)
    if differing:
        raise ConfigError(f"{where}: alpha_pattern gives {differing[0]} its own alpha, but llama.cpp has one alpha "
                          f"per adapter file; {MERGED_FIX}")
    return config


def _gguf_alpha(config: Mapping[str, Any], ranks: list[int], adapter_dir: Path) -> tuple[float, dict[int, float]]:
    """``(adapter.lora.alpha, {rank: scale})``: llama.cpp scales by alpha / r, PEFT by alpha / r or (rsLoRA) alpha / sqrt(r)."""
    alpha = float(config["lora_alpha"])
    if alpha == 0:  # llama-adapter.h: alpha 0 means "scale 1", where PEFT's adapter does nothing
        raise ConfigError(f"{adapter_dir}: lora_alpha is 0, so the adapter changes nothing; there is nothing to export")
    if not config.get("use_rslora"):
        return alpha, {r: alpha / r for r in ranks}
    if len(ranks) > 1:
        raise ConfigError(f"{adapter_dir}: rsLoRA with ranks {ranks} scales each rank by alpha / sqrt(r), which one "
                          f"llama.cpp alpha (applied as alpha / r) cannot express; {MERGED_FIX}")
    return alpha * math.sqrt(ranks[0]), {ranks[0]: alpha / math.sqrt(ranks[0])}


def _field(reader: Any, key: str) -> Any:
    """A GGUF key's value, or None when the file does not have it."""
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _read_base(path: Path) -> _BaseFile:
    import gguf

    from kbit.core.model.sources import gguf_general_metadata

    if not path.is_file():
        raise ConfigError(f"base GGUF {path} does not exist; pass the .gguf file the adapter will be applied to")
    reader = gguf.GGUFReader(str(path))
    value = partial(_field, reader)

    architecture = value(gguf.Keys.General.ARCHITECTURE)
    if value(gguf.Keys.General.TYPE) not in (None, "model") or architecture not in {a.gguf_name for a in SUPPORTED.values()}:
        raise ConfigError(f"{path} is a '{architecture}' {value(gguf.Keys.General.TYPE) or 'model'} file; kbit writes "
                          f"LoRA GGUFs for llama and qwen2 model files; use llama.cpp's convert_lora_to_gguf.py")
    heads = int(value(gguf.Keys.Attention.HEAD_COUNT.format(arch=architecture)))
    kv_heads = value(gguf.Keys.Attention.HEAD_COUNT_KV.format(arch=architecture))
    return _BaseFile(path=path, architecture=architecture,
                     blocks=int(value(gguf.Keys.LLM.BLOCK_COUNT.format(arch=architecture))), heads=heads,
                     kv_heads=int(kv_heads) if kv_heads is not None else heads,
                     shapes={t.name: tuple(int(n) for n in t.shape) for t in reader.tensors},
                     general=gguf_general_metadata(path))


def _pairs(adapter_dir: Path) -> list[_Pair]:
    """The adapter's A/B pairs, one per adapted base weight, as float32."""
    import torch
    from safetensors.torch import load_file

    parts: dict[str, dict[str, Any]] = {}
    for key, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        if key.endswith(".base_layer.weight"):  # the frozen base weights PEFT saves for LoRA'd embeddings: in the base file
            continue
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            raise ConfigError(f"{adapter_dir}: tensor {key} is not a LoRA A/B matrix, and llama.cpp applies only those; {MERGED_FIX}")
        parts.setdefault(match["module"], {})[match["part"]] = tensor.to(torch.float32)
    if not parts:
        raise ConfigError(f"{adapter_dir}: the adapter holds no LoRA tensors")
    pairs = []
    for module, found in sorted(parts.items()):
        embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
        a = found.get("lora_embedding_A" if embedding else "lora_A.weight")
        b = found.get("lora_embedding_B" if embedding else "lora_B.weight")
        if a is None or b is None or a.shape[0] != b.shape[1]:
            raise ConfigError(f"{adapter_dir}: {module} has no matching lora_A/lora_B pair; the adapter file is damaged")
        pairs.append(_Pair(hf_name=f"{module}.weight", a=a, b=b, embedding=embedding))
    return pairs


def _gguf_name(pair: _Pair, base: _BaseFile) -> str:
    """The base file's tensor for ``pair``, refused where llama.cpp would not apply the pair as PEFT did."""
    import gguf

    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == base.architecture)
    name = gguf.get_tensor_name_map(arch, base.blocks).get_name(pair.hf_name, try_suffixes=(".weight",))
    module = pair.hf_name.removesuffix(".weight")
    if name is None:
        raise ConfigError(f"adapter module {module} has no llama.cpp tensor in a {base.architecture} model; "
                          f"train without it in target_modules or {MERGED_FIX}")
    if base.tied and name in ("output.weight", "token_embd.weight"):
        raise ConfigError(f"{base.path.name} ties the output head to the embeddings, and llama.cpp cannot apply a LoRA "
                          f"on {module} there; train without it in target_modules or {MERGED_FIX}")
    if name not in base.shapes:
        raise ConfigError(f"adapter module {module} ({name}) is not in {base.path.name}; pass the base GGUF the adapter was trained on")
    # ggml order: (in, out) for a linear layer and (hidden, vocab) for token_embd, whose A is indexed by vocab
    expected = (pair.a.shape[1], pair.b.shape[0]) if not pair.embedding else (pair.b.shape[0], pair.a.shape[1])
    if tuple(base.shapes[name]) != tuple(expected):
        raise ConfigError(f"adapter module {module} fits a {tuple(reversed(expected))} weight but {base.path.name}'s "
                          f"{name} is {tuple(reversed(base.shapes[name]))}; pass the base GGUF the adapter was trained on")
    return name


def _tensors(pairs: list[_Pair], base: _BaseFile) -> list[tuple[str, Any]]:
    """``(name, float32 array)`` for every tensor of the file, ``.lora_a`` then ``.lora_b`` per base tensor."""
    config = {"num_attention_heads": base.heads, "num_key_value_heads": base.kv_heads}
    architecture = by_gguf_name(base.architecture)
    written = []
    for pair in pairs:
        name = _gguf_name(pair, base)
        a, b = (pair.a.T, pair.b) if pair.embedding else (pair.a, pair.b)
        if heads := row_permutation_heads(pair.hf_name, config, architecture):
            b = permute_rows(b, heads)
        written += [(f"{name}.lora_a", a.contiguous().numpy()), (f"{name}.lora_b", b.contiguous().numpy())]
    return written


def _quantize(array: Any, file_type: str, name: str, fallbacks: list[str]) -> tuple[Any, Any]:
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, file_type.upper())
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:
        fallbacks.append(f"{name}: row width {array.shape[-1]} is not a multiple of the {qtype.name} block, written F16")
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.F16), gguf.GGMLQuantizationType.F16


def _metadata(name: str, base: _BaseFile, base_model: BaseModel | None) -> Any:
    """``general.*``: the adapter's name and the base model it applies to."""
    import gguf

    from kbit.core.model.sources import gguf_hub_id

    general = base.general
    if base_model is None:
        # "": a GGUF's file name is its quantization's, not the repository's (gguf_hub_id would join them)
        base_model = BaseModel(name=general.get("general.name") or base.path.stem, hub_id=gguf_hub_id(dict(general), ""),
                               license=general.get("general.license") or "")
    entry: dict[str, Any] = {"name": base_model.name}
    if general.get("general.organization"):
        entry["organization"] = general["general.organization"]
    if base_model.hub_id.count("/") == 1:
        entry.update(organization=base_model.hub_id.split("/")[0], repo_url=f"https://huggingface.co/{base_model.hub_id}")
    return gguf.Metadata(name=name, license=base_model.license or None, base_models=[entry], tags=["kbit", "lora"])


def apply_lora_gguf(model: Any, lora_gguf: Path, base_gguf: Path) -> Any:
    """``model`` with the llama.cpp LoRA GGUF ``lora_gguf`` applied as llama.cpp applies it: a PEFT model, eval mode.

    ``model``: the transformers model read from ``base_gguf`` (``kbit.core.model.sources.load_gguf``), no
    adapter attached; PEFT wraps its layers in place, so it becomes the returned model's base.
    ``base_gguf``: the model file the adapter is applied to; its architecture, head counts and tensor
    shapes decide names and row order, as for :func:`write_lora_gguf`.

    Each ``<t>.lora_a``/``<t>.lora_b`` pair becomes the LoRA of the module whose weight is ``<t>``:
    dequantized to float32 from the file's tensor type, ``lora_b``'s q/k rows put back in the model's
    order, ``token_embd``'s ``lora_a`` transposed back, ``r`` read per pair from ``lora_b`` (a PEFT
    ``rank_pattern`` where ranks differ) and the scale llama.cpp uses at adapter scale 1: ``alpha / r``
    with ``adapter.lora.alpha``, 1 where alpha is 0. For a file :func:`write_lora_gguf` wrote, the result
    computes what the PEFT adapter computed (rsLoRA included), up to the file type's rounding.

    ConfigError, before the model is changed, for a file that is not a LoRA adapter GGUF, an adapter or
    model of another architecture than ``base_gguf``, a tensor that is not a ``.lora_a``/``.lora_b`` of
    a pair, one with no module in ``model`` or not in ``base_gguf``, and shapes that disagree.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    lora_gguf, base_gguf = Path(lora_gguf), Path(base_gguf)
    base = _read_base(base_gguf)
    alpha, tensors = _read_lora(lora_gguf, base)
    model_type = str(getattr(model.config, "model_type", ""))
    architecture = SUPPORTED.get(model_type)
    if architecture is None or architecture.gguf_name != base.architecture:
        raise ConfigError(f"the model is a '{model_type}' model but {base.path.name} a '{base.architecture}' one; "
                          f"pass the model load_gguf read from {base.path.name}")
    # the inverse of the exporter's own name map, over the model's own state-dict names
    modules = {gguf_name: hf_name.removesuffix(".weight") for hf_name, gguf_name
               in gguf_tensor_names(list(model.state_dict()), model.config.to_dict(), architecture)}
    heads = {"num_attention_heads": base.heads, "num_key_value_heads": base.kv_heads}
    pairs: dict[str, _Pair] = {}
    for name, (a_values, b_values) in sorted(tensors.items()):
        module = modules.get(name)
        if module is None:
            raise ConfigError(f"{lora_gguf.name} adapts {name}, which the model has no module for; "
                              f"pass the model and base GGUF the adapter was made for")
        layer = model.get_submodule(module)
        embedding = isinstance(layer, torch.nn.Embedding)
        a, b = torch.from_numpy(a_values), torch.from_numpy(b_values)
        a = a.T.contiguous() if embedding else a  # llama.cpp looks token rows up in token_embd's lora_a (vocab × r)
        if a.shape[0] != b.shape[1]:
            raise ConfigError(f"{lora_gguf.name}: {name}.lora_a {tuple(a_values.shape)} and .lora_b {tuple(b_values.shape)} "
                              f"have different ranks; the file is damaged")
        if permuted := row_permutation_heads(f"{module}.weight", heads, architecture):
            b = unpermute_rows(b, permuted).contiguous()
        pair = _Pair(hf_name=f"{module}.weight", a=a, b=b, embedding=embedding)
        _gguf_name(pair, base)  # the base file holds the tensor, in the adapter's shape, and llama.cpp can apply it
        fits = (a.shape[1], b.shape[0]) if embedding else (b.shape[0], a.shape[1])
        if tuple(layer.weight.shape) != tuple(fits):
            raise ConfigError(f"{lora_gguf.name}: {name}'s LoRA fits a {tuple(fits)} weight but the model's {module} "
                              f"is {tuple(layer.weight.shape)}; pass the model load_gguf read from {base.path.name}")
        pairs[module] = pair

    ranks = {module: int(pair.a.shape[0]) for module, pair in pairs.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    # PEFT patterns are regular expressions matched on a name's end; escaped full names match one module each
    rank_pattern = {re.escape(module): rank for module, rank in ranks.items() if rank != r}
    # llama-adapter.h: alpha 0 means scale 1, which is PEFT's alpha = r for each module
    config = LoraConfig(r=r, lora_alpha=alpha or r, target_modules=sorted(pairs), rank_pattern=rank_pattern,
                        alpha_pattern=rank_pattern if alpha == 0 else {}, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for module, pair in pairs.items():
            layer = peft_model.base_model.model.get_submodule(module)
            if pair.embedding:
                layer.lora_embedding_A["default"].copy_(pair.a)
                layer.lora_embedding_B["default"].copy_(pair.b)
            else:
                layer.lora_A["default"].weight.copy_(pair.a)
                layer.lora_B["default"].weight.copy_(pair.b)
    return peft_model.eval()


def check_lora_for_base(lora_gguf: Path, base_gguf: Path) -> None:
    """ConfigError, in one line, where ``lora_gguf`` is not a LoRA adapter for ``base_gguf``: another architecture,
    a tensor the base does not hold, or one of another shape. llama.cpp loads such a pair without a check and
    crashes the process at the first token (seen: SIGSEGV)."""
    base = _read_base(Path(base_gguf))
    _, tensors = _read_lora(Path(lora_gguf), base)
    for name, (a, b) in sorted(tensors.items()):
        if name not in base.shapes:
            raise ConfigError(f"{Path(lora_gguf).name} adapts {name}, which {base.path.name} does not hold; pass the "
                              "base GGUF the adapter was made for")
        embedding = name == "token_embd.weight"  # its lora_a is indexed by token (vocab × r)
        expected = (b.shape[0], a.shape[0]) if embedding else (a.shape[1], b.shape[0])  # ggml order, innermost first
        if tuple(base.shapes[name]) != tuple(expected):
            raise ConfigError(f"{Path(lora_gguf).name} adapts {name} as a {tuple(reversed(expected))} weight but "
                              f"{base.path.name}'s is {tuple(reversed(base.shapes[name]))}; pass the base GGUF the "
                              "adapter was made for")


def _read_lora(path: Path, base: _BaseFile) -> tuple[float, dict[str, tuple[Any, Any]]]:
    """``(adapter.lora.alpha, {base tensor: (lora_a, lora_b)})``, float32 numpy arrays in the file's row order."""
    import gguf
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"LoRA GGUF {path} does not exist; pass the adapter .gguf file")
    reader = gguf.GGUFReader(str(path))
    value = partial(_field, reader)

    kind = (value(gguf.Keys.General.TYPE), value(gguf.Keys.Adapter.TYPE))
    if kind != ("adapter", "lora"):
        raise ConfigError(f"{path} is not a LoRA adapter GGUF (general.type {kind[0] or 'unset'}, adapter.type "
                          f"{kind[1] or 'unset'}); pass the file write_lora_gguf or convert_lora_to_gguf.py wrote")
    architecture = value(gguf.Keys.General.ARCHITECTURE)
    if architecture != base.architecture:
        raise ConfigError(f"{path.name} is a LoRA for a '{architecture}' model but {base.path.name} is a "
                          f"'{base.architecture}' model; pass the base GGUF the adapter was made for")
    parts: dict[str, dict[str, Any]] = {}
    for tensor in reader.tensors:
        stem, _, part = tensor.name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            raise ConfigError(f"{path.name}: tensor {tensor.name} is not a .lora_a or .lora_b, the only tensors of a "
                              f"llama.cpp LoRA; the file is damaged")
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise ConfigError(f"{path.name}: tensor {tensor.name} is {tensor.tensor_type.name}, which gguf cannot "
                              f"dequantize; write the adapter as f32, f16, bf16 or q8_0") from None
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists dimensions innermost first
        parts.setdefault(stem, {})[part] = np.array(values, dtype=np.float32).reshape(shape)  # a copy, not the memory map
    if not parts:
        raise ConfigError(f"{path.name} holds no LoRA tensors; there is nothing to apply")
    for stem, found in parts.items():
        if len(found) != 2:
            raise ConfigError(f"{path.name}: {stem} has a .{next(iter(found))} without its pair; the file is damaged")
    return float(value(gguf.Keys.Adapter.LORA_ALPHA) or 0.0), {stem: (f["lora_a"], f["lora_b"]) for stem, f in parts.items()}
