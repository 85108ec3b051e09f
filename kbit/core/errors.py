"""Typed errors. Every ``KbitError`` is a user-facing, one-line message that names the fix.

The CLI prints ``KbitError`` messages without a traceback (unless ``--debug``) and exits with
``exit_code``; anything else is a bug and is reported as an internal error.
"""


class KbitError(Exception):
    """Base class for errors caused by input or environment, not by a bug in kbit."""

    exit_code = 2


class ConfigError(KbitError):
    """An option, config file, dataset or path is invalid; the message names the field and the fix."""


class UnknownMethodError(KbitError):
    """No installed plugin provides the requested method name; the message names the closest ones."""


class PluginError(KbitError):
    """A plugin failed to load or broke the hook contract; the message names its distribution."""


class MissingDependencyError(KbitError):
    """A method needs a package or device that is not here; the message gives the install line."""


class FidelityError(KbitError):
    """A measured fidelity figure is outside its expected range; the message gives the figure, the bound and the override.

    Every failed fidelity check is one of these, so it exits 1 wherever it fails: the merge check
    (``kbit train``), an export's check (``kbit export``) and the check of a run's own deploy file.
    Exit 1, not 2: the input was valid, the result is not good enough to keep.
    """

    exit_code = 1


class AllMethodsFailed(KbitError):
    """``kbit compare`` got no results from any method; its report gives each method's reason."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM arrived: like ``KeyboardInterrupt``, it unwinds the command so it can mark its output
    interrupted and release its lock; the CLI then exits ``128 + signal_number``."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"terminated by signal {signal_number}")
        self.signal_number = signal_number
