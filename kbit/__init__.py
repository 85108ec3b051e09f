"""kbit: fine-tune large language models on quantized bases through a registry of method plugins.

The public API a plugin author needs is re-exported here: ``hookimpl`` (the marker for hook
implementations), the records a hook returns, and the option helpers. Importing ``kbit`` never
imports torch; the heavy stack is imported only where a pipeline needs it.
"""

import os as _os
import sys as _sys

# `python -m kbit` puts the working directory first on the import path, so a `pluggy.py`, `inspect.py` or
# `*.dist-info` of a downloaded repository there would be imported (and a plugin loaded) as kbit starts: kbit drops
# that entry before importing anything, as `python -P` does. (Run as -m, the package is imported while sys.argv[0] is
# still "-m"; the installed `kbit` script never has the working directory on its path. What PYTHONPATH names, an
# empty entry included, which Python reads as the working directory, stays: the user put it there.)
if _sys.argv[:1] == ["-m"] and not _sys.flags.safe_path and _sys.path[:1] == [_os.getcwd()]:
    del _sys.path[0]

from kbit.core.errors import (  # noqa: E402 - after the import path is made safe
    ConfigError,
    KbitError,
    MissingDependencyError,
    PluginError,
    UnknownMethodError,
)
from kbit.core.contract.hookspecs import hookimpl
from kbit.core.contract.method_info import MergePolicy, MethodInfo, Requirement
from kbit.core.contract.options import Option, OptionSchema
from kbit.core.contract.spec import QuantizationSpec

__version__ = "0.2.0"

__all__ = [
    "ConfigError",
    "KbitError",
    "MergePolicy",
    "MethodInfo",
    "MissingDependencyError",
    "Option",
    "OptionSchema",
    "PluginError",
    "QuantizationSpec",
    "Requirement",
    "UnknownMethodError",
    "__version__",
    "hookimpl",
]
