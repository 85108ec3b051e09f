"""``kbit.core.system.signals``: the first stop signal unwinds the command, repeats close behind it do not,
an ignored signal stays ignored, and a final status is written with every signal held."""

import os
import signal

import pytest

from kbit.core.errors import Terminated
from kbit.core.system.signals import StopHandlers, signals_held


@pytest.fixture
def handlers():
    installed = StopHandlers()
    installed.install()
    yield installed
    installed.restore()


def _send(number: int) -> None:
    os.kill(os.getpid(), number)
    for _ in range(1000):  # the handler runs between bytecodes of the main thread
        pass


@pytest.mark.parametrize("number, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated),
                                            (signal.SIGHUP, Terminated)])
def test_the_first_signal_stops_and_repeats_close_behind_it_are_dropped(handlers, number, raised):
    with pytest.raises(raised):
        _send(number)
    assert handlers.stopped
    _send(number)  # the stop is under way: nothing raised
    _send(signal.SIGINT)


def test_signals_held_drops_every_stop_signal_while_the_block_runs(handlers):
    with signals_held():
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            _send(number)
    assert not handlers.stopped
    assert signal.getsignal(signal.SIGTERM) == handlers._handle


def test_a_signal_the_process_ignores_stays_ignored():
    """``nohup kbit train`` must survive the terminal closing."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    installed = StopHandlers()
    try:
        installed.install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == installed._handle
    finally:
        installed.restore()
        signal.signal(signal.SIGHUP, previous)
