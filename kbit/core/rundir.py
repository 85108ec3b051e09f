"""Run directories: exclusive ownership (a lock file) and atomic artifacts (temp sibling + rename).

A reader never sees a half-written artifact: ``adapter/``, ``merged/``, ``kbit.json`` and reports
appear only complete. A second process pointed at a locked run is refused; a lock left by a dead
process is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError

LOCK_NAME = ".kbit.lock"
STAGING_MARK = ".tmp-"  # .<artifact>.tmp-XXXX: being written; renamed into place when complete
REPLACED_MARK = ".old-"  # .<artifact>.old-XXXX: the previous version, deleted after the swap


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temp sibling of ``target``; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))
    try:
        yield staging
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}{REPLACED_MARK}", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clear_staging(directory: Path) -> list[str]:
    """Delete what a killed writer left in ``directory``: staging and replaced copies of artifacts.

    Only call this while holding the directory's :class:`RunLock`, so no live writer owns them.
    Returns the names removed.
    """
    removed = []
    for entry in sorted(Path(directory).glob(".*")):
        if STAGING_MARK in entry.name or REPLACED_MARK in entry.name:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry.name)
    return removed


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and an atomic rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}{STAGING_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, held by this process until ``release``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock; refuse if a live process holds it, take over a dead process's lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner and owner.get("host") == me["host"] and not _pid_alive(int(owner.get("pid", -1))):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
                raise ConfigError(
                    f"run directory {self.path.parent} is in use by {who}; wait for it or choose another --output"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise ConfigError(f"could not lock {self.path.parent}; remove {self.path} if no run is using it")

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def check_writable(directory: Path, min_free_bytes: int) -> None:
    """Fail before training when ``directory`` cannot be created or written, or has too little space."""
    directory = Path(directory)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise ConfigError(f"output directory {directory} cannot be created: {existing} is a file")
    try:  # os.access says yes to root even on read-only mounts, so really write
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {directory} is not writable ({exc.strerror}); choose another --output") from None
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        raise ConfigError(
            f"only {free / 2**20:.0f} MiB free under {existing}; the run needs about {min_free_bytes / 2**20:.0f} MiB"
        )
