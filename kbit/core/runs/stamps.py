"""The names and stamps a run's record carries: the file's name, its schema version, the time, the
versions of the packages that made it. Reading and writing the file is ``kbit.core.runs.record``'s job.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform


FILENAME = "kbit.json"
SCHEMA_VERSION = 3  # 3: typed parts (kbit.core.runs.sections), every field written; 2: typed spec settings (1, 2 still read)
PACKAGES = ("kbit", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate",
            "llmcompressor", "compressed-tensors", "torchao", "gguf")


def package_versions() -> dict[str, str]:
    """The installed versions of ``PACKAGES``, Python's, and the digest of kbit's own source (``kbit-source``), which
    tells two checkouts of one version apart."""
    from kbit.core.model.quantized_cache import source_digest

    versions = {"python": platform.python_version(), "kbit-source": source_digest("kbit")}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
