"""Write a Hugging Face model directory as one GGUF file that llama.cpp loads.

Uses the ``gguf`` package for everything it provides (``GGUFWriter``, ``Metadata`` for the
``general.*`` keys, ``get_tensor_name_map`` for tensor names, ``quants.quantize`` for the block
types); the per-architecture rules are in :mod:`kbit.core.export.architectures`, the tokenizer in
:mod:`kbit.core.export.vocab`. Which type each tensor gets reproduces llama.cpp:

- 1-D tensors, ``*_norm.weight`` and every tensor that is not a ``.weight`` (biases) stay F32
  (``convert_hf_to_gguf.py``, ``TextModel.prepare_tensors``);
- in q4_0/q4_1/q5_0/q5_1/tq2_0/mxfp4 files the output projection — ``token_embd`` when the embeddings are tied —
  gets a higher-precision type, as ``llama-quantize`` does (``llama_tensor_get_type``): it uses Q6_K,
  or Q8_0 when the row width is not a multiple of 256; ``gguf`` cannot write Q6_K, so kbit uses Q8_0
  (for SmolLM2, width 576, that is exactly llama.cpp's choice);
- a tensor whose row width is not a multiple of the type's block size falls back to F16, as
  ``prepare_tensors`` does on ``gguf.QuantError``;
- everything else gets the file's type.

A caller with its own codes passes ``prequantized``: :class:`~kbit.core.export.blocks.PackedTensor`
records by Hugging Face tensor name, written as given (only the Llama q/k row permutation, which
moves whole rows, is applied to them).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.errors import ConfigError
from kbit.core.export.architectures import (
    architecture_of,
    gguf_tensor_names,
    permute_rows,
    rope_tensors,
    row_permutation_heads,
    write_hyperparameters,
)
from kbit.core.export.blocks import PackedTensor
from kbit.core.contract.method_info import GGUF_TYPES as FILE_TYPES  # one list: MergePolicy.export names these too

log = logging.getLogger("kbit")

LOW_BIT_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "tq2_0", "mxfp4")
HEAD_TYPES = ("q8_0", "f16")


@attrs.frozen
class BaseModel:
    """What the file says about the model it was fine-tuned from.

    ``gguf`` is the base's own GGUF file when it came from one: its tokenizer keys and descriptive
    ``general.*`` keys (basename, size label, license, languages) are carried over.
    """

    name: str
    hub_id: str = ""
    license: str = ""
    gguf: Path | None = None


def check_file_type(file_type: str) -> str:
    """``file_type`` in kbit's spelling (llama.cpp writes them upper-case: Q8_0); ConfigError for an unknown one."""
    file_type = file_type.strip().lower()
    if file_type not in FILE_TYPES:
        raise ConfigError(f"unknown --type '{file_type}'; choose from {', '.join(FILE_TYPES)}")
    return file_type


def write_gguf(model_dir: Path, target: Path, file_type: str, *, name: str, base: BaseModel,
               datasets: Sequence[str] = (), prequantized: Mapping[str, PackedTensor] | None = None,
               head_type: str = "q8_0") -> dict[str, Any]:
    """Write ``model_dir`` (config.json, safetensors, tokenizer) to ``target`` as a GGUF of ``file_type``.

    ``head_type`` ("q8_0" or "f16"): the output head's type in a q4/q5 file (the embeddings when tied).

    Returns what was written: tensor count per GGML type, the tensors that fell back to another type
    and why, and the names written from ``prequantized``. Raises ConfigError for an architecture,
    tokenizer or file type kbit does not export.
    """
    import gguf

    model_dir = Path(model_dir)
    file_type = check_file_type(file_type)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    architecture = architecture_of(config, str(model_dir))
    prequantized = dict(prequantized or {})
    writer = gguf.GGUFWriter(path=None, arch=architecture.gguf_name)
    reader = gguf.GGUFReader(str(base.gguf)) if base.gguf else None

    if head_type not in HEAD_TYPES:
        raise ConfigError(f"unknown head type '{head_type}'; choose from {', '.join(HEAD_TYPES)}")
    tensors, report = _tensors(model_dir, config, architecture, file_type, prequantized, head_type)
    for gguf_name, data, qtype in tensors:
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)

    writer.add_type(gguf.GGUFType.MODEL)
    _general_metadata(reader, name, base, datasets, writer).set_gguf_meta_model(writer)
    write_hyperparameters(writer, config, architecture)
    # llama.cpp names its one MXFP4 file type after the MoE models it was made for (LLAMA_FTYPE_MOSTLY_MXFP4_MOE)
    ftype = "MXFP4_MOE" if file_type == "mxfp4" else file_type.upper()
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{ftype}"))
    if reader is not None:
        from kbit.core.export.vocab import copy_gguf_tokenizer

        copy_gguf_tokenizer(writer, reader, base.gguf)
        report["tokenizer"] = f"carried over from {Path(base.gguf).name}"
    else:
        from kbit.core.export.vocab import add_hf_tokenizer

        report["tokenizer"] = f"{add_hf_tokenizer(writer, model_dir, int(config['vocab_size']), architecture.gguf_name)} (from tokenizer.json)"
    _keep_loadable_name(writer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.write_header_to_file(path=Path(target))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report


# llama.cpp gives a vocabulary Phi-3's token attributes when general.name holds "phi3" or "phi-3" (any case),
# looking these tokens up by text (llama-vocab.cpp): a file so named whose vocabulary lacks one fails to load
# ("error loading model vocabulary: unordered_map::at").
PHI3_NAME = re.compile("phi-?3", re.IGNORECASE)
PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def _keep_loadable_name(writer: Any) -> None:
    """Rename a GGUF whose name would make llama.cpp read its vocabulary as Phi-3's, which it is not (a model
    of another family named after Phi-3, or a test model): "tiny-phi3" becomes "tiny-phi 3"."""
    import gguf

    keys = writer.kv_data[0]
    name, tokens = keys["general.name"].value, set(keys["tokenizer.ggml.tokens"].value)
    if PHI3_NAME.search(name) and not set(PHI3_TOKENS) <= tokens:
        renamed = PHI3_NAME.sub(lambda match: match.group(0).replace("-", "")[:-1] + " 3", name)
        log.info("the GGUF is named %s, not %s: llama.cpp reads a name holding 'phi3' as a Phi-3 vocabulary, "
                 "which this one is not", renamed, name)
        keys["general.name"] = gguf.GGUFValue(renamed, gguf.GGUFValueType.STRING)


def _tensors(model_dir: Path, config: Mapping[str, Any], architecture: Any, file_type: str,
             prequantized: dict[str, PackedTensor], head_type: str) -> tuple[list[tuple[str, Any, Any]], dict[str, Any]]:
    import gguf
    import torch
    from safetensors import safe_open

    from kbit.core.model.sources import check_weights

    check_weights(model_dir)  # no weights, or a truncated file, refused in one line
    files = sorted(model_dir.glob("*.safetensors"))
    handles = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                handles[key] = file
    unknown = sorted(set(prequantized) - set(handles))
    if unknown:
        raise ConfigError(f"pre-quantized tensor {unknown[0]} is not in {model_dir}")
    wanted = getattr(gguf.GGMLQuantizationType, file_type.upper())
    pairs = list(gguf_tensor_names(list(handles), config, architecture))
    has_output = any(mapped == "output.weight" for _, mapped in pairs)
    written: list[tuple[str, Any, Any]] = []
    fallbacks: list[str] = []
    for hf_name, gguf_name in pairs:
        with safe_open(str(handles[hf_name]), framework="pt") as handle:
            tensor = handle.get_tensor(hf_name)
        heads = row_permutation_heads(hf_name, config, architecture)
        if hf_name in prequantized:
            packed = prequantized[hf_name]
            if tuple(packed.shape) != tuple(tensor.shape):
                raise ConfigError(f"pre-quantized {hf_name} has shape {packed.shape}, the checkpoint {tuple(tensor.shape)}")
            data = permute_rows(packed.data, heads) if heads else packed.data
            written.append((gguf_name, data, packed.ggml_type))
            continue
        array = tensor.to(torch.float32)
        if architecture.norm_shift and hf_name.endswith("norm.weight"):
            array = array + architecture.norm_shift
        if heads:
            array = permute_rows(array, heads)
        array = array.contiguous().numpy()
        qtype = _tensor_type(gguf_name, array.shape, wanted, file_type, has_output, head_type)
        try:
            data = gguf.quants.quantize(array, qtype)
        except gguf.QuantError:
            fallbacks.append(f"{gguf_name}: row width {array.shape[-1]} is not a multiple of the {qtype.name} block, written F16")
            qtype = gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(array, qtype)
        written.append((gguf_name, data, qtype))
    written.extend((name, factors, gguf.GGMLQuantizationType.F32) for name, factors in rope_tensors(config))
    counts = Counter(qtype.name for _, _, qtype in written)
    if fallbacks and wanted.name not in counts:  # a file of the type in name only, larger than the type promises
        raise ConfigError(f"{model_dir}: no weight of this model has rows a whole number of {wanted.name} blocks wide "
                          f"({fallbacks[0]}), so a {file_type} file would hold F16 weights; choose a type whose block "
                          "fits (q8_0, q4_0, q5_0 … take 32)")
    return written, {"tensor_types": dict(sorted(counts.items())), "fallbacks": fallbacks,
                     "prequantized": sorted(prequantized)}


def _tensor_type(gguf_name: str, shape: tuple[int, ...], wanted: Any, file_type: str, has_output: bool,
                 head_type: str = "q8_0") -> Any:
    import gguf

    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    if file_type in LOW_BIT_TYPES and (gguf_name == "output.weight" or (not has_output and gguf_name == "token_embd.weight")):
        return getattr(gguf.GGMLQuantizationType, head_type.upper())
    return wanted


def _general_metadata(reader: Any, name: str, base: BaseModel, datasets: Sequence[str], writer: Any) -> Any:
    """``general.*`` keys: this model's name, the base it derives from, and what the base's GGUF says of itself."""
    import gguf

    carried: dict[str, Any] = {}
    if reader is not None:
        for key in ("basename", "size_label", "license", "languages", "tags"):
            field = reader.fields.get(f"general.{key}")
            if field is not None:
                carried[key] = field.contents()
    base_entry: dict[str, Any] = {"name": base.name}
    if base.hub_id.count("/") == 1:
        base_entry.update(organization=base.hub_id.split("/")[0], repo_url=f"https://huggingface.co/{base.hub_id}")
    total = writer.get_total_parameter_count()
    return gguf.Metadata(
        name=name,
        basename=carried.get("basename"),
        size_label=carried.get("size_label") or gguf.size_label(*total),
        license=base.license or carried.get("license"),
        languages=carried.get("languages"),
        tags=[*(carried.get("tags") or []), "kbit"],
        base_models=[base_entry],
        datasets=[{"name": d, "repo_url": f"https://huggingface.co/datasets/{d}"} for d in datasets] or None,
    )
