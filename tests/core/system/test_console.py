"""kbit's console: which records reach it at each verbosity, and the run log that keeps them all."""

from __future__ import annotations

import logging
import warnings

import pytest

from kbit.core.system.console import (ConsoleFilter, HARMLESS, LOG_FILE_ONLY, is_harmless, run_log, setup_console,
                               teardown_console)


def _record(name: str, level: int, message: str, **extra) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


TORCHAO_SO = "Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load this library"


def test_harmless_messages_match_module_category_and_text_only():
    assert is_harmless(_record("torchao", logging.WARNING, TORCHAO_SO))
    assert is_harmless(_record("bitsandbytes.backends.cpu.ops", logging.WARNING,
                               "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'"))
    assert not is_harmless(_record("torchao", logging.WARNING, "int8 weights overflowed"))  # a new torchao warning shows
    assert not is_harmless(_record("mylib", logging.WARNING, TORCHAO_SO))  # the same text from elsewhere shows
    assert not is_harmless(_record("torchao", logging.ERROR, TORCHAO_SO))  # an error is never harmless
    assert not is_harmless(_record("torchaox", logging.WARNING, TORCHAO_SO))  # module prefix means a submodule
    assert all(rule.why for rule in HARMLESS)


@pytest.mark.parametrize("verbosity, shown", [
    ("normal", {"kbit info", "kbit warning", "other warning", "kbit error"}),
    ("quiet", {"kbit error"}),
    ("verbose", {"kbit info", "kbit warning", "other warning", "kbit error", "harmless", "other info", "deprecation"}),
])
def test_console_filter_by_verbosity(verbosity, shown):
    records = {
        "kbit info": _record("kbit", logging.INFO, "step 1/3"),
        "kbit warning": _record("kbit.train", logging.WARNING, "auto sizing"),
        "kbit error": _record("kbit", logging.ERROR, "failed"),
        "other warning": _record("transformers.modeling_utils", logging.WARNING, "weights not initialized"),
        "other info": _record("transformers", logging.INFO, "loading"),
        "harmless": _record("torchao", logging.WARNING, TORCHAO_SO),
        "deprecation": _record("py.warnings", logging.WARNING, "script_method is deprecated",
                               warning_category="DeprecationWarning", warning_module="torch.jit._script"),
        "file only": _record("kbit", logging.ERROR, "traceback", **LOG_FILE_ONLY),
    }
    keep = ConsoleFilter(verbosity)
    assert {name for name, record in records.items() if keep.filter(record)} == shown


def test_setup_routes_warnings_with_their_module_and_category_and_the_run_log_keeps_everything(tmp_path, capsys):
    setup_console("normal")
    try:
        logging.getLogger("torchao").warning(TORCHAO_SO)
        logging.getLogger("kbit").info("planning")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = __import__("kbit.core.system.console", fromlist=["_log_warning"])._log_warning
            warnings.warn("a real deprecation", FutureWarning, stacklevel=1)
        (tmp_path / "run").mkdir()
        with run_log(tmp_path / "run"):
            logging.getLogger("kbit").info("training")
        logging.getLogger("kbit").info("between runs")
        with run_log(tmp_path / "run"):  # --resume appends
            logging.getLogger("kbit").info("resumed")
        err = capsys.readouterr().err
    finally:
        teardown_console()
    assert "Failed to load" not in err
    assert "planning" in err and "training" in err
    assert f"[{__name__} FutureWarning] a real deprecation" in err
    text = (tmp_path / "run" / "train.log").read_text()
    lines = [line.split(" ", 3)[2:] for line in text.splitlines()]
    assert [line[0] for line in lines] == ["WARNING", "INFO", "WARNING", "INFO", "INFO"]
    assert "torchao: Failed to load" in text and "py.warnings: a real deprecation" in text
    assert "resumed" in text and "between runs" not in text
    assert logging.getLogger().handlers == [h for h in logging.getLogger().handlers if not getattr(h, "_kbit", False)]


def test_teardown_leaves_the_environment_as_it_was(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    setup_console("quiet")
    import os

    assert os.environ["TQDM_DISABLE"] == "1"  # for the libraries this command imports
    teardown_console()
    assert "TQDM_DISABLE" not in os.environ  # not for the next command or its subprocesses
    monkeypatch.setenv("TQDM_DISABLE", "0")
    setup_console("normal")
    teardown_console()
    assert os.environ["TQDM_DISABLE"] == "0"  # the user's own setting is theirs


def test_library_loggers_are_adopted_for_the_command_and_given_back():
    import torch  # noqa: F401 - torch's own handlers are installed at import
    import transformers.utils.logging as hf_logging

    from kbit.core.system.console import adopt_library_logs

    torch_logger = logging.getLogger("torch")
    before = (list(torch_logger.handlers), torch_logger.propagate, hf_logging.is_progress_bar_enabled())
    setup_console("normal")
    try:
        adopt_library_logs()
        assert not [h for h in torch_logger.handlers if type(h) is logging.StreamHandler]
        assert logging.getLogger("transformers").propagate and not hf_logging.is_progress_bar_enabled()
    finally:
        teardown_console()
    assert (list(torch_logger.handlers), torch_logger.propagate, hf_logging.is_progress_bar_enabled()) == before
