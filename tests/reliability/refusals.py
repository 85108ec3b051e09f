"""What every bad-input table checks: the command refuses in one line, exit 2, and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kbit.core.cli import main


def listing(root: Path) -> list[tuple[str, int]]:
    """Every path under ``root`` (links not followed) with its size, kbit's model cache left out."""
    return sorted((str(p.relative_to(root)), p.lstat().st_size if p.is_file() else 0)
                  for p in Path(root).rglob("*") if "cache" not in p.relative_to(root).parts)


def run_in_process(args: list[str], capsys: Any) -> tuple[int, str]:
    """The CLI run in this process: its exit code and what it wrote to stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


def assert_refused(args: list[str], message: str, capsys: Any, root: Path, run: Path | None = None) -> str:
    """Run ``args`` and check the refusal: exit 2, one ``kbit: error:`` line holding ``message``, no
    traceback, nothing written or changed under ``root`` and in the finished ``run``. Returns stderr."""
    root_before, run_before = listing(root), run and listing(run)
    code, err = run_in_process(args, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbit: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    assert listing(root) == root_before, "the failed command left files behind or changed what it does not own"
    assert run is None or listing(run) == run_before, "the failed command changed a finished run"
    return err
