"""Input files are opened only when they are what they claim to be: regular files.

Opening a named pipe (FIFO) for reading blocks until some other process writes to it — for ever,
inside a system call that does not return to Python to act on SIGTERM — and a device such as
``/dev/zero`` reads without end. So every path kbit reads as input (model weights and configs,
datasets, config YAML, GGUF files) is checked here before it is opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kbit.core.errors import ConfigError

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it is a special file (``"a named pipe (FIFO)"``…), else ``None``.

    Links are followed: a link to a pipe is a pipe. A missing path is ``None`` (not special); its
    reader reports it as missing. Only ``stat`` is called, which never blocks on a pipe.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), None)


def refuse_special_file(path: str | os.PathLike[str], what: str) -> None:
    """Raise ``ConfigError`` when ``path`` (described as ``what``, e.g. "dataset file") is a special file."""
    kind = special_kind(path)
    if kind is not None:
        raise ConfigError(f"{what} {path} is {kind}, not a regular file; pass a regular file "
                          "(kbit does not read pipes or devices, which could block or never end)")


def refuse_special_files(directory: str | os.PathLike[str], what: str) -> None:
    """Refuse a ``directory`` (described as ``what``) that holds a special file among its own entries.

    Loaders open the files of a model directory by name (``config.json``, ``*.safetensors``,
    tokenizer files), so any special entry is refused before any of them is opened.
    """
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return  # not a readable directory: whatever reads it next reports that
    for entry in entries:
        refuse_special_file(Path(directory) / entry.name, f"{what} entry")


def require_regular_file(path: str | os.PathLike[str], what: str) -> None:
    """Raise ``ConfigError`` unless ``path`` (described as ``what``) is a regular file: a missing path,
    a folder and a special file are each named as what they are."""
    refuse_special_file(path, what)
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a folder, not a file; pass the file inside it")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path} does not exist" + _windows_hint(str(path)))


def _windows_hint(path: str) -> str:
    """A fix for a path written with Windows separators or a drive letter, which name no file here."""
    if "\\" not in path and not (len(path) > 1 and path[1] == ":" and path[0].isalpha()):
        return ""
    posix = path.replace("\\", "/")
    if os.path.exists(posix):
        return f"; use / between folders: {posix}"
    return "; on this system paths use / between folders and have no drive letter"
