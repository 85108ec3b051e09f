"""What a kbit command shows on the console, and the full log a run keeps in ``RUN/train.log``.

kbit's own progress goes through the ``kbit`` logger; third-party libraries log through theirs (or
``warnings.warn``, or their own stream handlers). ``setup_console`` sends all of it to two places:

- the console (stderr, a rich handler): ``normal`` shows kbit's progress and every third-party warning
  except the known-harmless ones listed in ``HARMLESS`` (matched by module, category and message, so
  a new warning from the same library still shows); ``verbose`` shows everything, progress bars
  included; ``quiet`` shows errors only (results are printed on stdout by the command itself);
- the run log (``RUN/train.log`` while a run owns its folder, see ``run_log``): every record, the
  filtered ones included, at any verbosity, with time, level and logger name.

Start-up stays cheap: ``setup_console`` imports no torch. ``adopt_library_logs`` (called by a command
just before it imports its heavy pipeline) imports torch and transformers, which install their own
stderr handlers at import, and routes their loggers through the handlers above instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import attrs

VERBOSITIES = ("quiet", "normal", "verbose")
LOG_NAME = "train.log"
log = logging.getLogger("kbit")
LOG_FILE_ONLY = {"console": False}  # ``extra=`` of a record for the run log only (the CLI prints the error itself)


@attrs.frozen
class Harmless:
    """A third-party message known to be harmless.

    :param module: the logger name, or the module a ``warnings.warn`` came from (this or a submodule).
    :param category: a log level name (``WARNING``) or a warning class name (``FutureWarning``).
    :param pattern: a regular expression the message must match (``re.search``).
    :param why: why it can be hidden: what it means for a kbit run.
    """

    module: str
    category: str
    pattern: str
    why: str

    def matches(self, module: str, category: str, message: str) -> bool:
        return ((module == self.module or module.startswith(self.module + "."))
                and category == self.category and re.search(self.pattern, message) is not None)


HARMLESS = (
    Harmless("huggingface_hub.utils._http", "WARNING", r"(thrown while requesting|Retrying in \d+s)",
             "the hub client's retries of a failing request; when they all fail, kbit's own error names what "
             "could not be fetched and why"),
    Harmless("torchao", "WARNING", r"^Failed to load .*\.so\b",
             "torchao ships kernels built for other CUDA/Python versions; the paths kbit uses do not need them"),
    Harmless("torch.utils._pytree", "WARNING", r"Calling register_constant\(\) on Enum subclasses is deprecated",
             "torchao registers its enums the old way at import; nothing kbit calls"),
    Harmless("bitsandbytes", "WARNING", r"^Failed to load CPU gemm_4bit_forward from kernels-community",
             "an optional CPU kernel from the `kernels` package; bitsandbytes uses its own CPU path instead"),
    Harmless("bitsandbytes.autograd._functions", "WARNING", r"^MatMul8bitLt: inputs will be cast from",
             "LLM.int8 rounds each layer's input to int8 by design (through float16), at every call; bnb-int8's "
             "merge policy says so, and the run's scores are of that model"),
    Harmless("torchao.kernel", "WARNING", r"Detected no triton",
             "torchao's Triton kernels serve GPUs (CUDA builds of torch bring Triton); kbit's CPU paths do not use them"),
    Harmless("llmcompressor", "WARNING", r"^No accelerator available! Compressing model on CPU instead",
             "a CPU run quantizes on the CPU, as the user chose; the quantize record names the device"),
    Harmless("llmcompressor", "WARNING", r"^Disabling tokenizer parallelism due to threading conflict",
             "llmcompressor turns off the tokenizer's threads while it calibrates; results are unchanged"),
    Harmless("torch.fx._symbolic_trace", "WARNING", r"^is_fx_tracing will return true for both",
             "a torch deprecation notice triggered by llmcompressor's model tracing"),
    Harmless("transformers.modeling_utils", "UserWarning", r"^Attempting to save a model with offloaded modules",
             "llmcompressor keeps the weights in CPU memory while it quantizes; saving them needs no more than that"),
    Harmless("transformers.trainer_utils", "WARNING", r"^mtime may not be reliable on this filesystem",
             "old checkpoints are then rotated by step number, the order kbit's checkpoint-N folders have anyway"),
    Harmless("transformers", "WARNING", r"^Ignoring clean_up_tokenization_spaces=True for BPE tokenizer",
             "the tokenizer config asks for a WordPiece clean-up that transformers rightly skips for BPE"),
    Harmless("transformers.modeling_utils", "FutureWarning", r"^`is_gradient_checkpointing` is deprecated",
             "peft reads the attribute by its old name (transformers >= 5.24 renamed it); a notice for peft's developers"),
    Harmless("transformers.integrations.ggml", "WARNING", r"^Merges were not in checkpoint, building merges on the fly",
             "a GGUF's vocabulary need not list BPE merges; transformers rebuilds them from the token ranks, and kbit "
             "refuses a conversion whose tokenizer encodes differently from the file's own (with llama-cpp-python)"),
    Harmless("transformers.integrations.bitsandbytes", "WARNING", r"^The modules are dequantized in",
             "kbit dequantizes the base on purpose to merge; the merge records the dtype and checks the result"),
)


# Deprecation notices address the developers of the code that calls the deprecated API (Python itself
# hides them outside __main__); a user of kbit cannot act on them. Kept in the run log.
DEVELOPER_WARNINGS = ("DeprecationWarning", "PendingDeprecationWarning")


def _origin(record: logging.LogRecord) -> tuple[str, str]:
    """(module, category) of a record: a captured warning's own, else the logger name and level."""
    return getattr(record, "warning_module", record.name), getattr(record, "warning_category", record.levelname)


def is_harmless(record: logging.LogRecord) -> bool:
    module, category = _origin(record)
    message = record.getMessage()
    return any(rule.matches(module, category, message) for rule in HARMLESS)


def _is_kbit(record: logging.LogRecord) -> bool:
    return record.name == "kbit" or record.name.startswith("kbit.")


class ConsoleFilter(logging.Filter):
    """Which records reach the console at a verbosity (the run log takes every record)."""

    def __init__(self, verbosity: str) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        if self.verbosity == "verbose":
            return True
        if self.verbosity == "quiet":
            return record.levelno >= logging.ERROR
        if _is_kbit(record):
            return record.levelno >= logging.INFO
        if getattr(record, "warning_category", None) in DEVELOPER_WARNINGS:
            return False
        return record.levelno >= logging.WARNING and not is_harmless(record)


class _ConsoleFormatter(logging.Formatter):
    """kbit's lines as they are; another library's prefixed with where it came from."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if _is_kbit(record):
            return message
        module, category = _origin(record)
        kind = f" {category}" if category != record.levelname else ""
        return f"[{module}{kind}] {message}"


class _LineHandler:
    """Mixed into rich's ``RichHandler``: one plain line per record, no time/level/path table.

    The table pads every line to the console's width; a log line should be as long as its text.
    """

    STYLES = {"WARNING": ("warning  ", "bold yellow"), "ERROR": ("error    ", "bold red"), "CRITICAL": ("error    ", "bold red")}

    def render(self, *, record, traceback, message_renderable):
        from rich.text import Text

        label, style = self.STYLES.get(record.levelname, ("", ""))
        line = Text(label, style=style) + message_renderable
        return line if traceback is None else [line, traceback]


class RunLogHandler(logging.Handler):
    """Every record of the command, into the run's ``train.log`` once a run folder is attached.

    Until the first ``attach`` (start-up, planning) records are kept in memory, so the log of a run
    starts with the command's first line; ``detach`` closes the file, and records between runs
    (``kbit compare`` trains several in one process) belong to none. The file is appended to line by
    line rather than written atomically: a log is most useful exactly when a run dies mid-way.
    """

    MAX_BUFFERED = 10_000

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._buffer: list[logging.LogRecord] | None = []
        self._file = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None:
            if self._buffer is not None and len(self._buffer) < self.MAX_BUFFERED:
                self._buffer.append(record)
            return
        try:
            self._file.write(self.format(record) + "\n")
            self._file.flush()
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)

    def attach(self, path: Path) -> None:
        self.detach()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by detach()
        buffered, self._buffer = self._buffer or [], None
        for record in buffered:
            self.emit(record)

    def detach(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.detach()
        super().close()


_state: dict[str, object] = {"verbosity": None, "run_log": None, "showwarning": None, "root_level": None}
_env_set: list[str] = []  # environment variables setup_console (or route_loguru) set, unset by teardown_console
_undo: list = []  # how to give torch, transformers and datasets their own logging back (teardown_console)


def _set_env(name: str, value: str) -> None:
    """Set ``name`` for the libraries of this process unless the user set it; undone by ``teardown_console``."""
    if name not in os.environ:
        os.environ[name] = value
        _env_set.append(name)


def verbosity() -> str | None:
    """The verbosity ``setup_console`` was given; None when kbit runs as a library (consoles untouched)."""
    return _state["verbosity"]  # type: ignore[return-value]


def setup_console(level: str = "normal") -> None:
    """Route every log record and warning of this process to kbit's console and run-log handlers.

    Imports no torch. Called once per CLI command (again: replaces the previous set-up).
    """
    from rich.console import Console
    from rich.logging import RichHandler

    if level not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {VERBOSITIES}, got {level!r}")
    teardown_console()
    root = logging.getLogger()
    handler_class = type("KbitConsoleHandler", (_LineHandler, RichHandler), {})
    console = handler_class(console=Console(stderr=True, soft_wrap=True), markup=False, rich_tracebacks=False,
                            level=logging.DEBUG)
    console.setFormatter(_ConsoleFormatter())
    console.addFilter(ConsoleFilter(level))
    run_log = RunLogHandler()
    for handler in (console, run_log):
        handler._kbit = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    log.setLevel(logging.DEBUG)
    # Libraries that set no level of their own log INFO into the run log too (the console filter hides it).
    _state.update(verbosity=level, run_log=run_log, showwarning=warnings.showwarning, root_level=root.level)
    root.setLevel(logging.INFO)
    warnings.showwarning = _log_warning
    if level != "verbose":
        # tqdm reads TQDM_* defaults when it is imported (after this, by the heavy libraries): every bar
        # off, the Trainer's and quantizers' included; kbit logs its own progress instead.
        _set_env("TQDM_DISABLE", "1")
        _silence_bars()


def _silence_bars() -> None:
    """Every tqdm bar off, also one created with an explicit ``disable=False`` (compressed-tensors' bars,
    which the environment default above cannot reach); ``teardown_console`` gives tqdm its own back."""
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    def quiet_init(self, *args, **kwargs):
        if len(args) > 10:  # disable given by position (tqdm's 11th parameter)
            args = (*args[:10], True, *args[11:])
        else:
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = quiet_init
    _undo.append(lambda: setattr(tqdm.std.tqdm, "__init__", original))


def teardown_console() -> None:
    """Undo ``setup_console``: kbit's handlers removed, ``warnings.showwarning`` restored."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_kbit", False)]:
        root.removeHandler(handler)
        handler.close()
    if _state["showwarning"] is not None and warnings.showwarning is _log_warning:
        warnings.showwarning = _state["showwarning"]
    if _state["root_level"] is not None:
        root.setLevel(_state["root_level"])
    _state.update(verbosity=None, run_log=None, showwarning=None, root_level=None)
    while _env_set:
        os.environ.pop(_env_set.pop(), None)
    while _undo:
        _undo.pop()()


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` into the ``py.warnings`` logger, keeping the warning's category and module.

    ``logging.captureWarnings`` would do the routing but keeps only the formatted text, and the console
    filter matches harmless warnings on their category and module.
    """
    record_extra = {"warning_category": category.__name__, "warning_module": _module_of(filename)}
    logging.getLogger("py.warnings").warning("%s (%s:%s)", message, filename, lineno, extra=record_extra)


def _module_of(filename: str) -> str:
    """The dotted module name of a source file, found in ``sys.modules`` (else the file's stem)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return Path(filename).stem


def adopt_library_logs() -> None:
    """Send torch's and transformers' log records through kbit's handlers, and hide progress bars
    unless verbose. Imports torch and transformers; a no-op when ``setup_console`` was not called."""
    level = verbosity()
    if level is None:
        return
    import torch  # noqa: F401 - installs torch's own stderr handlers, replaced below
    import transformers.utils.logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    _undo.extend([hf_logging.enable_default_handler, hf_logging.disable_propagation])
    manager = logging.Logger.manager
    for name in list(manager.loggerDict):
        logger = manager.loggerDict[name]
        if not isinstance(logger, logging.Logger) or not (name == "torch" or name.startswith("torch.")):
            continue
        own = [h for h in logger.handlers if type(h) is logging.StreamHandler]  # torch._logging's stderr handler
        if not own:
            continue
        # given back as the whole list, so the handlers keep their order
        _undo.append(lambda logger=logger, handlers=list(logger.handlers): setattr(logger, "handlers", handlers))
        for handler in own:
            logger.removeHandler(handler)
        logger.propagate = True
        _undo.append(lambda logger=logger: setattr(logger, "propagate", False))
    if level != "verbose":
        import datasets

        hf_logging.disable_progress_bar()  # also huggingface_hub's
        datasets.disable_progress_bars()
        _undo.extend([hf_logging.enable_progress_bar, datasets.enable_progress_bars])


LOGURU_LEVELS = {"TRACE": logging.DEBUG, "DEBUG": logging.DEBUG, "INFO": logging.INFO, "SUCCESS": logging.INFO,
                 "METRIC": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


def route_loguru() -> None:
    """Send llmcompressor's loguru messages through ``logging`` (and so to the console filter and run log).

    llmcompressor sets up its loguru sinks (stdout, INFO and its per-layer METRIC lines) when it is
    first imported, so it is imported here, before a quantize stage that uses it; a no-op without
    ``setup_console`` or without llmcompressor.
    """
    import importlib.util

    if verbosity() is None or importlib.util.find_spec("llmcompressor") is None:
        return
    # llmcompressor adds a stdout sink at import and logs through it while still importing; with an
    # empty console level it adds none (its documented switch), and the sink below takes over.
    _set_env("LLM_COMPRESSOR_LOG_LEVEL", "")
    import llmcompressor  # noqa: F401 - configures its loguru sinks, replaced below
    from loguru import logger as loguru_logger

    def to_logging(message) -> None:
        record = message.record
        level = LOGURU_LEVELS.get(record["level"].name, record["level"].no)
        logging.getLogger(record["name"] or "loguru").log(level, "%s", record["message"])

    loguru_logger.remove()
    loguru_logger.add(to_logging, level=0, format="{message}")


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Keep the log of the command in ``run_dir/train.log`` (appended to on ``--resume``) while it runs.

    Under the CLI this writes out what was logged since the command started; used as a library,
    it adds a plain file handler for kbit's own records and the root logger's.
    """
    handler = _state["run_log"]
    path = Path(run_dir) / LOG_NAME
    if isinstance(handler, RunLogHandler):
        handler.attach(path)
        try:
            yield
        finally:
            handler.detach()
        return
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(file_handler)
    previous = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        log.setLevel(previous)
