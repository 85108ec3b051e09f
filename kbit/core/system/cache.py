"""kbit's cache folder, shared by the model conversions, the quantized-base cache and the CPU probe."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """kbit's cache folder: ``$KBIT_CACHE`` or ``~/.cache/kbit``."""
    return Path(os.environ.get("KBIT_CACHE", Path.home() / ".cache" / "kbit"))
