"""``kbit`` and ``python -m kbit``: the command line, under the malloc settings of ``kbit.core.allocator``."""


def run() -> None:
    """The command's entry point: re-executed once with kbit's malloc settings (where glibc has them),
    then ``kbit.core.cli.main`` on the command line's arguments."""
    from kbit.core.allocator import relaunch_with_tuned_malloc

    relaunch_with_tuned_malloc()
    from kbit.core.cli import main

    main()


if __name__ == "__main__":
    run()
