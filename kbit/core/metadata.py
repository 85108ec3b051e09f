"""``kbit.json``: the metadata written beside every kbit output directory.

It is a versioned JSON object; readers refuse a newer schema or a corrupt file with one line.
Fields: schema_version, kind ("run" or "quantized"), status ("running", "finished", "failed"),
error, method, spec, method_options, merge_policy, base_model, dataset, config, versions,
artifacts, merge, metrics, loss_history, wall_time_s, peak_memory_bytes, created/updated; quantize
after post-training quantization; exports (one entry per file `kbit export` wrote, with its check).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError
from kbit.core.rundir import write_json_atomic
from kbit.core.spec import QuantizationSpec

FILENAME = "kbit.json"
SCHEMA_VERSION = 2  # 2: the spec holds typed adapter/training/calibration settings (1 still read)
PACKAGES = ("kbit", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate",
            "llmcompressor", "compressed-tensors", "torchao", "gguf")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_metadata(directory: Path, data: dict[str, Any]) -> None:
    """Write ``kbit.json`` atomically, stamping the schema version and update time."""
    fields = {k: v for k, v in data.items() if k not in ("schema_version", "updated")}
    write_json_atomic(Path(directory) / FILENAME, {"schema_version": SCHEMA_VERSION, **fields, "updated": now()})


def read_metadata(directory: Path) -> dict[str, Any] | None:
    """The metadata of ``directory``, or None when it has no ``kbit.json``; ConfigError if unreadable."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc}); restore it or rerun the step that wrote it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is corrupt (not a JSON object)")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ConfigError(f"{path} has no schema_version; it was not written by kbit")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path} has schema version {version}, newer than this kbit reads ({SCHEMA_VERSION}); upgrade kbit")
    _check_types(data, path)
    return data


# The fields kbit reads back, and the JSON types they must have (absent is allowed: older or partial records).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "status": (str,), "name": (str, type(None)), "method": (str,), "error": (str, type(None)),
    "spec": (dict,), "merge_policy": (dict,), "base_model": (dict,), "dataset": (dict,), "config": (dict,),
    "artifacts": (dict,), "train": (dict,), "merge": (dict, type(None)), "metrics": (dict,), "quantize": (dict, type(None)),
    "loss_history": (list,), "trust_remote_code": (bool,), "method_options": (dict,), "exports": (list,),
}


def _check_types(data: dict[str, Any], path: Path) -> None:
    for field, types in _FIELD_TYPES.items():
        if field in data and not isinstance(data[field], types):
            expected = " or ".join("null" if t is type(None) else {"str": "a string", "dict": "an object", "list": "a list",
                                                                     "bool": "true/false"}[t.__name__] for t in types)
            raise ConfigError(f"{path}: field '{field}' must be {expected}, got {type(data[field]).__name__}; "
                              "the file was edited or damaged — restore it")
    base = data.get("base_model") or {}
    if "path" in base and not isinstance(base["path"], str):
        raise ConfigError(f"{path}: field 'base_model.path' must be a string; restore the file")


def spec_of(metadata: dict[str, Any], where: Path) -> QuantizationSpec:
    """The ``QuantizationSpec`` recorded in ``metadata``."""
    if "spec" not in metadata:
        raise ConfigError(f"{Path(where) / FILENAME} has no 'spec'; it is incomplete")
    return QuantizationSpec.from_dict(metadata["spec"])
