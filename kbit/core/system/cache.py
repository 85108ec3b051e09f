"""kbit's cache folder, shared by the model conversions, the quantized-base cache and the CPU probe."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_warned: set[str] = set()


def cache_root() -> Path:
    """kbit's cache folder: ``$KBIT_CACHE`` or ``~/.cache/kbit``. One that exists as something other than a
    folder is warned of once: every cache is then skipped (measured or converted again each time)."""
    root = Path(os.environ.get("KBIT_CACHE", Path.home() / ".cache" / "kbit"))
    if root.exists() and not root.is_dir() and str(root) not in _warned:
        _warned.add(str(root))
        logging.getLogger("kbit").warning("the cache folder %s (KBIT_CACHE) is a file, so kbit caches nothing; point "
                                          "KBIT_CACHE at a folder", root)
    return root
