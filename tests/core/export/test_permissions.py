"""An exported GGUF file (written through ``mkstemp``, 0600 whatever the umask) ends with the mode the
user's umask gives a new file, and a folder the export creates with the umask's folder mode."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kbit.testing.pytest_plugin import cli_environment


def _export_under(umask: int, *args: str) -> subprocess.CompletedProcess:
    """``kbit export`` in a subprocess started with ``umask``, as a user's shell would start it."""
    code = f"import os, sys; os.umask({umask}); from kbit.core.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "export", *args], capture_output=True, text=True, timeout=900,
                          check=False, env=cli_environment())


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_an_exported_gguf_file_follows_the_umask(tiny, tmp_path, umask, file_mode, folder_mode):
    target = tmp_path / "new" / "tiny-f16.gguf"
    result = _export_under(umask, str(tiny), "--output", str(target), "--type", "f16", "--limit", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert oct(target.stat().st_mode & 0o777) == oct(file_mode)
    assert oct(target.parent.stat().st_mode & 0o777) == oct(folder_mode)
    assert [p.name for p in target.parent.iterdir()] == [target.name]
