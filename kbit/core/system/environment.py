"""kbit's on/off environment variables (``KBIT_BUILTINS_ONLY``, ``KBIT_NO_QUANTIZED_CACHE``,
``KBIT_SYSTEM_MALLOC``), read one way: a value that is neither on nor off is warned of, once, and
read as off."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger("kbit")

ON = ("1", "true", "yes", "on")
OFF = ("", "0", "false", "no", "off")
_warned: set[str] = set()


def env_flag(name: str, environ: Mapping[str, str] | None = None, warn: bool = True) -> bool:
    """Whether the variable ``name`` is set on in ``environ`` (default: this process's environment); ``warn``:
    say so when it is neither on nor off."""
    value = (os.environ if environ is None else environ).get(name, "").strip().lower()
    if value in ON:
        return True
    if warn and value not in OFF and f"{name}={value}" not in _warned:
        _warned.add(f"{name}={value}")
        log.warning("%s=%s is neither on (%s) nor off (%s); kbit reads it as off", name, value, ", ".join(ON),
                    ", ".join(v for v in OFF if v))
    return False
