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
