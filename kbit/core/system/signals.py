"""Stopping on a signal: Ctrl-C, SIGTERM and SIGHUP unwind a command so its output ends marked.

``StopHandlers`` (the CLI installs them) turn the first of them into ``KeyboardInterrupt``
(SIGINT) or ``Terminated`` (SIGTERM, SIGHUP): every command unwinds, the owner of an output writes
its final status ("interrupted") and releases its lock, and the CLI exits 130, 143 or 129.

A stop is asked for once: a second signal close behind the first (two Ctrl-C, ``kill`` twice) must
not cut short the unwinding that writes the status, so signals within ``REPEAT_GRACE_S`` of the
first are dropped; a later one raises again, so a stop that hangs can still be interrupted. Owners
also write their final status under ``signals_held``, where no signal raises at all.

Signals are Python's to handle in the main thread only; elsewhere (kbit called from another
thread of a program) all of this does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from kbit.core.errors import Terminated

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
REPEAT_GRACE_S = 10.0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopHandlers:
    """The stop handlers of one command: ``install`` them, ``restore`` what they replaced once it ends.

    ``stopped`` says whether a stop signal arrived. Outside the main thread both do nothing.
    """

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.first_at: float | None = None

    @property
    def stopped(self) -> bool:
        return self.first_at is not None

    def install(self) -> None:
        """Handle each stop signal, but one the process ignores (``nohup``, a shell's background job)
        stays ignored."""
        if _main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS
                             if signal.getsignal(number) is not signal.SIG_IGN}

    def restore(self) -> None:
        restore(self.previous)
        self.previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.first_at is not None and now - self.first_at < REPEAT_GRACE_S:
            return  # the stop asked for a moment ago is under way: let it write the status
        self.first_at = now
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)


def ignore_stops() -> None:
    """The program ends now, after a stop: further stop signals are ignored at the OS level, so that
    none kills the interpreter's shutdown (exit -2 instead of 130) or prints a traceback from it."""
    if _main_thread():
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)


def restore(previous: dict[int, Any]) -> None:
    """Put back signal handlers (``signal.signal``'s return values, None for one not set from Python)."""
    for number, handler in previous.items():
        signal.signal(number, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Run the block (an output's final status, its lock's release) without any stop signal cutting it
    short: signals arriving meanwhile are dropped, the command being on its way out already."""
    if not _main_thread():
        yield
        return
    previous = {number: signal.signal(number, lambda signum, frame: None) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        restore(previous)
