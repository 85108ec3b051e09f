"""The kbit command's malloc settings: when it re-executes itself, with what, and what it records."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kbit.__main__ import runs_models
from kbit.core.system.allocator import OPT_OUT, RELAUNCHED, TUNABLES, malloc_decision, tuned_environment

GLIBC = ("glibc", "2.36")
OURS = ":".join(TUNABLES)


def test_adds_both_settings_to_an_environment_without_them():
    env = tuned_environment({"PATH": "/bin"}, GLIBC)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": OURS}


def test_keeps_the_users_own_tunables_and_their_values():
    given = "glibc.malloc.tcache_count=7:glibc.malloc.arena_max=2"
    env = tuned_environment({"GLIBC_TUNABLES": given}, GLIBC)
    # only the missing name is added; the user's tcache_count and other settings stay as given
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.mxfast=0:" + given


@pytest.mark.parametrize("environ, libc", [
    ({"GLIBC_TUNABLES": OURS}, GLIBC),  # already relaunched: no loop
    ({"GLIBC_TUNABLES": "glibc.malloc.mxfast=1:glibc.malloc.tcache_count=3"}, GLIBC),  # the user chose both
    ({OPT_OUT: "1"}, GLIBC),
    ({OPT_OUT: "yes"}, GLIBC),
    ({}, ("", "")),  # musl, macOS, Windows
    ({}, ("glibc", "2.17")),  # no tcache yet
    ({}, ("glibc", "unknown")),
])
def test_no_relaunch(environ, libc):
    assert tuned_environment(environ, libc) is None


@pytest.mark.parametrize("value", ["", "0", "false", "No"])
def test_an_opt_out_set_to_false_is_no_opt_out(value):
    assert tuned_environment({OPT_OUT: value}, GLIBC) is not None


def test_decision_says_what_is_in_force():
    assert malloc_decision({"GLIBC_TUNABLES": OURS})["value"] == OURS
    # a later value for the same name wins in glibc, so only mxfast=0 is kbit's here
    overridden = malloc_decision({"GLIBC_TUNABLES": OURS + ":glibc.malloc.tcache_count=7"})
    assert overridden["value"] == "glibc.malloc.mxfast=0"
    assert malloc_decision({OPT_OUT: "1"}) == {"value": "default", "requested": "system", "reason": f"{OPT_OUT} is set"}
    assert "not started by the kbit command" in malloc_decision({})["reason"]


@pytest.mark.skipif(tuned_environment({}) is None, reason="needs glibc >= 2.26")
def test_the_command_reexecutes_once_with_the_settings_and_keeps_its_exit_status():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT, RELAUNCHED)}
    # ``python -m kbit`` runs the same entry point as the ``kbit`` script: the code before it runs
    # twice, first without the settings, then, re-executed, with them; a usage error still exits 2
    # with one line on stderr.
    probe = ("import os, runpy, sys; sys.argv = ['kbit', 'train', '--no-such-flag']; "
             "print(os.environ.get('GLIBC_TUNABLES'), file=sys.stderr); runpy.run_module('kbit', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and lines[:2] == ["None", OURS], result.stderr
    assert len(lines) == 3 and "--no-such-flag" in lines[2]
    # never twice: where the variable did not survive the first relaunch, the marker stops a loop
    marked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**env, RELAUNCHED: "1"},
                            timeout=120)
    assert marked.returncode == 2 and marked.stderr.splitlines()[0] == "None" and OURS not in marked.stderr
    # a command that runs no model starts once
    probe = probe.replace("'train', '--no-such-flag'", "'methods', '--json'")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stderr.splitlines()[0] == "None" and OURS not in result.stderr


@pytest.mark.parametrize("args, expected", [
    (["train"], True),
    (["--debug", "-q", "eval", "runs/x"], True),
    (["compare", "--methods", "qlora"], True),
    (["train", "--help"], False),
    (["--help"], False),
    ([], False),
    (["methods", "--json"], False),
    (["spec", "qlora"], False),
])
def test_only_commands_that_run_models_are_relaunched(args, expected):
    assert runs_models(args) is expected
