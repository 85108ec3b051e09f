"""``kbit compare --help`` is cheap: it imports no torch."""

import subprocess
import sys


def test_compare_help_imports_no_torch():
    code = ("import sys; from kbit.core.cli import main\n"
            "try:\n    main(['compare', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--methods" in result.stdout and "every method failed" in result.stdout


def test_a_method_named_twice_is_compared_once_and_said_so(caplog):
    import logging

    from kbit.core.compare.plan import choose_methods

    with caplog.at_level(logging.WARNING, logger="kbit"):
        chosen = choose_methods(["lora", "fp", "lora"], {})
    assert [c.name for c in chosen] == ["lora"]
    assert "--methods names lora twice (fp is its alias); it is compared once" in caplog.text
    assert "--methods names lora twice; it is compared once" in caplog.text
