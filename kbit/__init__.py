"""kbit: fine-tune large language models on quantized bases through a registry of method plugins.

The public API a plugin author needs is re-exported here: ``hookimpl`` (the marker for hook
implementations), the records a hook returns, and the option helpers. Importing ``kbit`` never
imports torch; the heavy stack is imported only where a pipeline needs it.
"""

from kbit.core.errors import (
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
