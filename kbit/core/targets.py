"""Output targets: the one rule every command that writes a folder or file follows.

Checked before any work, so a refused command writes nothing:

1. A target that does not exist, or an empty folder, is free.
2. The command's own earlier output of the same kind (``is_own``) may be replaced: reports by
   ``kbit eval``, a quantized model by ``kbit quantize``, a run by ``kbit train --overwrite``.
3. A kbit run, and anything inside a run that is not this command's own artifact, is never the
   output of another command, ``--overwrite`` or not.
4. The working directory and its ancestors are never replaced.
5. Symlinks are resolved. A link is followed only to this command's own output: one that leads to
   anything else is refused, ``--overwrite`` or not.
6. Anything else that exists (a model folder, a plain file, other data) is refused unless the user
   passes ``--overwrite``.

Replacing happens only after the new output is complete (``kbit.core.rundir.atomic_directory``),
and never follows a symlink inside what it replaces.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from kbit.core.errors import ConfigError
from kbit.core.rundir import LOCK_NAME

METADATA = "kbit.json"  # kbit.core.metadata.FILENAME; imported lazily there, named here to stay cheap


def kbit_kind(path: Path) -> str | None:
    """The ``kind`` of the kbit output at ``path`` ("run", "quantized", "eval" …), or None if it is none.

    An unreadable ``kbit.json`` still marks the folder as kbit's: its kind is "unknown".
    """
    for name, key in ((METADATA, "kind"), ("report.json", "kind")):
        file = Path(path) / name
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return "unknown"
            return str(data.get(key) or "unknown") if isinstance(data, dict) else "unknown"
    return None


def enclosing_run(path: Path) -> Path | None:
    """The kbit run folder that ``path`` is, or lies inside of; None when there is none."""
    for candidate in (Path(path), *Path(path).parents):
        if kbit_kind(candidate) == "run":
            return candidate
    return None


def claim(target: Path, *, is_own: Callable[[Path], bool], overwrite: bool = False, flag: str = "--output",
          what: str = "output") -> Path:
    """Check ``target`` against the rules above; returns the real path to write to.

    :param is_own: whether an existing real path holds this command's own earlier output of the same kind.
    :param overwrite: the user passed ``--overwrite`` (rule 6).
    :param flag: the option that named the target, for the message.
    """
    target = Path(target).expanduser()
    real = target.resolve()
    here = Path.cwd().resolve()
    if real == here or real in here.parents:
        raise ConfigError(f"{flag} {target} is the working directory or contains it; choose a new folder")
    if not os.path.lexists(target) or (real.is_dir() and not target.is_symlink()
                                       and all(p.name == LOCK_NAME for p in real.iterdir())):
        return real  # free: absent, or empty but for the lock file a finished kbit command left
    if target.is_symlink() and not os.path.exists(target):
        raise ConfigError(f"{flag} {target} is a broken symlink; remove it or choose another path")
    if is_own(real):
        return real
    run = enclosing_run(real)
    if run is not None:
        inside = "is the kbit run" if run == real else f"lies inside the kbit run {run}"
        raise ConfigError(f"{flag} {target} {inside}; a run is never the {what} of another command — choose a new path")
    if target.is_symlink():
        raise ConfigError(f"{flag} {target} is a symlink to {real}, which holds other data; "
                          "pass a path that is not a link")
    if not overwrite:
        kind = "is a file" if real.is_file() else "already holds other data"
        raise ConfigError(f"{flag} {target} {kind}, not written by this command; choose another path "
                          "or pass --overwrite to replace it")
    return real
