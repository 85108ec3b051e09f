"""``kbit`` and ``python -m kbit``: the command line, under the malloc settings of ``kbit.core.system.allocator``
for the commands that run models."""

from __future__ import annotations

import sys

# The commands that load and run models; the others (help, methods, spec, push, new-method) start
# in a fraction of a second and gain nothing from a relaunch.
MODEL_COMMANDS = frozenset({"train", "eval", "quantize", "export", "compare"})


def runs_models(args: list[str]) -> bool:
    """Whether the command line ``args`` (without the program) asks for a command that runs models.
    The root options are flags, so the first word that is not an option is the command."""
    command = next((arg for arg in args if not arg.startswith("-")), None)
    return command in MODEL_COMMANDS and "--help" not in args


def run() -> None:
    """The command's entry point: a model-running command is re-executed once with kbit's malloc
    settings (where glibc has them), then ``kbit.core.cli.main`` runs the command line's arguments."""
    if runs_models(sys.argv[1:]):
        from kbit.core.system.allocator import relaunch_with_tuned_malloc

        relaunch_with_tuned_malloc()
    from kbit.core.cli import main

    main()


if __name__ == "__main__":
    run()
