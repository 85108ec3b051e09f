"""Public test helpers for plugin authors: the method contract suite and tiny random models.

    from kbit.testing import MethodContract

    class TestMyMethod(MethodContract):
        method = "my-method"          # the name your entry point registers
        options = {"bits": "4"}       # optional overrides used by every contract test

Run it with pytest against your installed plugin (``pip install 'kbit[test]'``). Nothing is
downloaded: the tiny model is built from a config with random weights and a character-level
tokenizer. kbit's pytest plugin (loaded automatically) provides the fixtures ``kbit_tiny_model``
and ``kbit_cli`` (the real command line in a subprocess); ``get_method(name)`` gives the installed
method as kbit calls it (hooks with their return types checked).
"""

from kbit.core.methods.registry import get_method
from kbit.testing.contract import MethodContract
from kbit.testing.tiny import TINY_CHAT_TEMPLATE, make_tiny_model

__all__ = ["TINY_CHAT_TEMPLATE", "MethodContract", "get_method", "make_tiny_model"]
