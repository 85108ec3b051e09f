"""``kbit.json`` as a file: its name, its schema version, reading its raw JSON, and the stamps in it.

kbit itself reads and writes the file as one typed record (``kbit.core.record.RunRecord``); this
module is the layer under it: a corrupt file or one from a newer kbit is refused here, in one line.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError

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


def read_metadata(directory: Path) -> dict[str, Any] | None:
    """The metadata of ``directory``, or None when it has no ``kbit.json``; ConfigError if unreadable."""
    path = Path(directory) / FILENAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # not JSON or UTF-8, a 5000-digit number, nesting past the stack
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise ConfigError(f"{path} is corrupt ({reason}); restore it or rerun the step that wrote it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is corrupt (not a JSON object)")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ConfigError(f"{path} has no schema_version; it was not written by kbit")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path} has schema version {version}, newer than this kbit reads ({SCHEMA_VERSION}); upgrade kbit")
    return data
