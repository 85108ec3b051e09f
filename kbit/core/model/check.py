"""Check a base model against a run's spec before anything is loaded, trained or written.

Everything here reads only ``config.json`` and the safetensors headers, and builds the model's
skeleton on the meta device (no weights in memory), so a mismatch is refused in a second:

- the config declares no more layers than the weight files hold (read from the raw JSON, before
  transformers spends time in proportion to the declared count);
- the config names a causal language model;
- the weight files hold exactly the tensors (and shapes) the config describes — transformers would
  otherwise start the missing or mis-shaped ones from random values with only a warning;
- every adapter ``target_modules`` name matches a linear layer, and the adapter rank is usable by them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError
from kbit.core.system.input_files import refuse_special_files

LINEAR_TYPES = ("Linear", "Conv1D")  # torch Linear and GPT-2-style Conv1D, as PEFT targets them
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder_layers)\.(\d+)\.")


def stored_tensors(directory: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of ``directory``'s ``*.safetensors`` files: name → (file name, shape), from the headers alone."""
    from safetensors import safe_open

    stored: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                stored[key] = (file.name, tuple(handle.get_slice(key).get_shape()))
    return stored


def check_layer_count(directory: Path) -> None:
    """Refuse a ``config.json`` that declares more layers than the weight files hold.

    Read from the raw JSON and the safetensors headers, before transformers parses the config or
    builds a skeleton: both take time in proportion to the declared layer count (minutes for a
    million), and those layers would start from random values anyway. Layers are counted from the
    tensor names (``model.layers.N.``); where the names follow no known pattern, no model can have
    more layers than tensors. A pipe or device among the files is refused before any is opened.
    """
    refuse_special_files(directory, "model directory")
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # load_config reports an unreadable config
    declared = next((config[k] for k in LAYER_COUNT_KEYS if isinstance(config, dict) and k in config), None)
    if not isinstance(declared, int) or isinstance(declared, bool):
        return
    names = stored_tensors(Path(directory))
    if not names:
        return
    indices = {int(m.group(1)) for m in map(_LAYER_INDEX.search, names) if m}
    held = max(indices) + 1 if indices else len(names)
    if declared > held:
        what = f"{held} layers" if indices else f"{held} tensors in all"
        raise ConfigError(
            f"{directory}: config.json describes weights the files lack (it declares {declared} layers; the weight "
            f"files hold {what}); they would start from random values — use the config that came with these weights"
        )


def load_config(path: str, trust_remote_code: bool = False) -> Any:
    """The model's transformers config; ConfigError when unreadable or not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    check_layer_count(Path(path))
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the model config in {path}: {_first_line(exc)}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ConfigError(f"model type '{config.model_type}' in {path} is not a causal language model")
    return config


def skeleton(config: Any, trust_remote_code: bool = False) -> Any:
    """The model built from ``config`` on the meta device: names and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"cannot build model type '{config.model_type}' from its config: {_first_line(exc)}") from None


def check_weights_match(path: Path, model: Any) -> None:
    """Refuse weight files whose tensor names or shapes disagree with the model the config describes."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        return  # a GGUF-converted or hub model is checked where it is loaded
    stored: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                stored[key] = tuple(handle.get_slice(key).get_shape())
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = _tied_names(model)
    for key, shape in stored.items():
        if key in expected and expected[key] != shape:
            raise ConfigError(
                f"{path}: weight {key} has shape {list(shape)} but config.json describes {list(expected[key])}; "
                "the config does not belong to these weights"
            )
    missing = sorted(k for k in expected if k not in stored and k not in tied)
    if missing and len(missing) == len(expected):
        return  # none match: a different naming (e.g. a prefix) that transformers maps itself
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ConfigError(
            f"{path}: config.json describes weights the files lack ({', '.join(missing[:3])}{more}); "
            "they would start from random values — use the config that came with these weights"
        )


def _tied_names(model: Any) -> set[str]:
    """Parameter names that share storage with another parameter (tied embeddings): saved once."""
    names: set[str] = set()
    if getattr(model.config, "tie_word_embeddings", False):
        head = model.get_output_embeddings()
        if head is not None:
            names |= {f"{name}.weight" for name, module in model.named_modules() if module is head}
    keys = getattr(model, "_tied_weights_keys", None) or []
    names |= set(keys.keys() if isinstance(keys, dict) else keys)
    return names


def check_adapter_fits(model: Any, adapter: Any) -> None:
    """Refuse ``target_modules`` that match no linear layer, and a rank above the targeted layers' widths."""
    linear = {name: module for name, module in model.named_modules()
              if type(module).__name__ in LINEAR_TYPES and name}
    head = model.get_output_embeddings()
    targets = adapter.target_modules
    if targets == "all-linear":
        chosen = {n: m for n, m in linear.items() if m is not head}
    else:
        chosen = {n: m for n, m in linear.items() if any(n == t or n.endswith(f".{t}") for t in targets)}
        if head is not None and any(m is head for m in chosen.values()):
            name = next(n for n, m in chosen.items() if m is head)
            raise ConfigError(f"target_modules names {name}, the output head, on which trl's trainer refuses a LoRA adapter; "
                              "drop it from target_modules")
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in linear)]
        if unmatched:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear if linear[n] is not head})
            raise ConfigError(
                f"target_modules {', '.join(unmatched)} match no linear layer of this model; "
                f"its linear layers are {', '.join(suffixes)} (or use all-linear)"
            )
    rank = adapter.r
    if isinstance(rank, int) and chosen:
        # A layer's update has rank at most min(in, out); above the largest such width, every
        # targeted layer only gains parameters (and memory) without gaining capacity.
        usable = max(min(_shape(m)) for m in chosen.values())
        if rank > usable:
            raise ConfigError(
                f"adapter rank r={rank} exceeds what any targeted layer can use (min(in, out) is at most "
                f"{usable}): the extra rank adds parameters without capacity; pass -o r={min(usable, 64)} or lower"
            )


def _shape(module: Any) -> tuple[int, int]:
    if hasattr(module, "in_features"):
        return int(module.in_features), int(module.out_features)
    return tuple(int(d) for d in module.weight.shape)  # Conv1D: (in, out)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.")


def check_gguf_header(gguf: Path) -> Any:
    """The ``gguf.GGUFReader`` of ``gguf``, once its metadata is checked against its tensor table (both read from the
    header alone, memory-mapped). transformers builds the model from the metadata before it reads a tensor, so a few
    edited numbers (100,000 blocks, a feed-forward width of 10^8) would allocate gigabytes, fewer blocks would drop
    layers silently, and a special token past the vocabulary would fail only when its text is needed: refused here,
    as an unreadable header or tensor table is (transformers would call it invalid JSON)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf))
    except Exception as exc:  # noqa: BLE001 - the reader raises ValueError, struct.error, IndexError, OverflowError…
        raise ConfigError(f"cannot read GGUF model {gguf}: {type(exc).__name__}: {str(exc)[:120]} (in its header or "
                          "tensor table); the file is truncated or damaged: re-download or re-export it") from None
    fields = reader.fields
    architecture = fields["general.architecture"].contents() if "general.architecture" in fields else ""

    def number(key: str) -> int | None:
        field = fields.get(key)
        value = field.contents() if field is not None else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    shapes = {tensor.name: [int(n) for n in tensor.shape] for tensor in reader.tensors}  # ggml order: row width first

    def width(kind: str, axis: int, per: str | None = None) -> int | None:
        """The widest any block's ``kind`` tensor says the setting is (divided by the ``per`` setting: heads), None
        when unknown. The widest, as layers may differ (Gemma 4's sliding and full-attention heads)."""
        divisor = number(f"{architecture}.{per}") if per else 1
        found = [shape[axis] for name, shape in shapes.items()
                 if _GGUF_BLOCK.match(name) and name.endswith(f".{kind}.weight") and len(shape) > axis]
        return max(found) // divisor if found and divisor else None

    blocks = {int(m.group(1)) for m in map(_GGUF_BLOCK.match, shapes) if m}
    embeddings = shapes.get("token_embd.weight")
    tokens = fields.get("tokenizer.ggml.tokens")
    # (setting, what the tensors say, whether the two must be equal or the setting may be smaller): llama.cpp refuses a
    # block count or embedding other than the tensors'; the widths are upper bounds, as fused or gated layouts differ
    held = [(f"{architecture}.{key}", implied, exact, "its tensors say") for key, implied, exact in (
        ("block_count", max(blocks) + 1 if blocks else None, True),
        ("embedding_length", embeddings[0] if embeddings and len(embeddings) == 2 else None, True),
        ("vocab_size", embeddings[1] if embeddings and len(embeddings) == 2 else None, True),
        ("feed_forward_length", width("ffn_down", 0), False),
        ("attention.key_length", width("attn_q", 1, "attention.head_count"), False),
        ("attention.value_length", width("attn_v", 1, "attention.head_count_kv"), False))]
    held += [(f"tokenizer.ggml.{role}_token_id", len(tokens.data) - 1 if tokens is not None else None, False,
              "the last token id is") for role in ("bos", "eos", "padding", "unknown")]
    for key, implied, exact, said in held:
        value = number(key)
        if value is None or implied is None or value == implied or (not exact and value <= implied):
            continue
        raise ConfigError(f"{gguf}: its metadata says {key} = {value}, but {said} {implied}; the file was edited or "
                          "damaged — re-download or re-export it")
    return reader
