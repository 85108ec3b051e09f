"""kbit-quanto: optimum-quanto weight-only quantization as kbit methods (``quanto-int8``, ``quanto-int4``).

Written against kbit's public plugin API only: ``kbit.hookimpl``, the records ``kbit`` exports,
``kbit.core.adapters`` and ``kbit.core.device``.
"""

__version__ = "0.1.0"
