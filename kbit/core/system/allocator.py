"""The ``kbit`` commands that run models do so with glibc's malloc set up for training: no per-thread
cache and no fast bins, so freed memory coalesces.

With glibc's defaults a training step's forward pass grew the process by about twice what autograd
keeps alive; with these settings by much less, at the same step time (``python -m
benchmarks.step_memory``; the figures are in BENCHMARKS.md, item 9). The cause is small chunks (tensor and autograd bookkeeping) that glibc's tcache and fast bins hold back without
coalescing: lying between the freed activation buffers, they keep those from merging into holes the
next, differently sized buffer could reuse, so the heap grows instead. Large allocations through
``mmap`` (a lower ``M_MMAP_THRESHOLD``) avoid that too, but made the step much slower (a page fault
per fresh page).

glibc reads these settings (``GLIBC_TUNABLES``) only when a process starts, so a command that runs
models (``kbit.__main__``) re-executes itself once with them added, before anything is loaded, as
``torch.backends.xeon.run_cpu`` relaunches a program to preload another allocator. Settings the
user already gave in ``GLIBC_TUNABLES`` win. ``KBIT_SYSTEM_MALLOC=1`` keeps glibc's defaults.
Elsewhere (no glibc, glibc < 2.26, a program that imports kbit) nothing changes.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = ("glibc.malloc.tcache_count=0", "glibc.malloc.mxfast=0")
OPT_OUT = "KBIT_SYSTEM_MALLOC"
RELAUNCHED = "KBIT_MALLOC_RELAUNCHED"  # set in the re-executed process
MIN_GLIBC = (2, 26)  # the first with a tcache and with tunables for it


def _glibc_version(libc: tuple[str, str]) -> tuple[int, ...] | None:
    name, version = libc
    if name != "glibc":
        return None
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return None


def _opted_out(environ: Mapping[str, str]) -> bool:
    from kbit.core.system.environment import env_flag

    return env_flag(OPT_OUT, environ, warn=RELAUNCHED not in environ)  # the process kbit re-executed said it once


def _given(environ: Mapping[str, str]) -> dict[str, str]:
    """``GLIBC_TUNABLES`` as glibc reads it: ``name=value`` pairs, the last one for a name wins."""
    pairs = (item.partition("=") for item in environ.get("GLIBC_TUNABLES", "").split(":") if "=" in item)
    return {name: value for name, _, value in pairs}


def tuned_environment(environ: Mapping[str, str], libc: tuple[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-execute with: ``GLIBC_TUNABLES`` with kbit's settings for the names it
    does not set yet (a user's own value for a name is kept). None where nothing is missing, the user
    opted out (``KBIT_SYSTEM_MALLOC`` on: 1, true, yes or on) or the C library is not a glibc
    that has these settings."""
    if _opted_out(environ):
        return None
    version = _glibc_version(platform.libc_ver() if libc is None else libc)
    if version is None or version < MIN_GLIBC:
        return None
    given = _given(environ)
    missing = [setting for setting in TUNABLES if setting.partition("=")[0] not in given]
    if not missing:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join([*missing, *filter(None, environ.get("GLIBC_TUNABLES", "").split(":"))])
    return env


def relaunch_with_tuned_malloc() -> None:
    """Replace this process by the same command under ``tuned_environment``; return without doing
    anything where no relaunch is needed or the interpreter's command line is unknown.

    Call it first thing in an entry point (nothing loaded, nothing written yet): the process id,
    open files, exit status and signals carry over, as ``exec`` keeps them.
    """
    env = tuned_environment(os.environ)
    command = list(getattr(sys, "orig_argv", []))
    # A program read from stdin ("-") or typed interactively ("") cannot be run a second time; and
    # the marker stops a loop where glibc drops the variable (a secure-execution process).
    if env is None or not command or not sys.executable or sys.argv[0] in ("-", "") or RELAUNCHED in os.environ:
        return
    env[RELAUNCHED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *command[1:]], env)
    except OSError:
        return  # run on with the defaults rather than not at all


def malloc_decision(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What this process runs with, for ``decisions.malloc`` in ``kbit.json``: kbit's malloc settings
    that are in force (``GLIBC_TUNABLES`` as glibc read it at start), or why they are not."""
    environ = os.environ if environ is None else environ
    given = _given(environ)
    ours = [setting for setting in TUNABLES if given.get(setting.partition("=")[0]) == setting.partition("=")[2]]
    requested = "system" if _opted_out(environ) else "auto"
    if ours:
        return {"value": ":".join(ours), "requested": requested,
                "reason": "freed memory coalesces instead of the heap growing (kbit.core.system.allocator)"}
    if _opted_out(environ):
        reason = f"{OPT_OUT} is set"
    elif given:
        reason = "GLIBC_TUNABLES gives these settings other values"
    else:
        reason = "not started by the kbit command, or the C library is not glibc >= 2.26"
    return {"value": "default", "requested": requested, "reason": reason}
