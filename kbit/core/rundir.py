"""Run directories: exclusive ownership (a lock file) and atomic artifacts (temp sibling + rename).

A reader never sees a half-written artifact: ``adapter/``, ``merged/``, ``kbit.json`` and reports
appear only complete, with the permissions the user's umask gives any new file. A second process
pointed at a locked run is refused; a dead process holds no lock.
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


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temp sibling of ``target``; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700 whatever the umask
    try:
        yield staging
        if os.path.lexists(target):
            trash = set_aside(target)
            os.replace(staging, target)
            discard(trash)
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


def set_aside(path: Path) -> Path:
    """Rename ``path`` (a folder or file) to a hidden sibling and return it; delete that later with
    ``discard`` once what replaces it is complete. Nothing inside is followed or deleted yet."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}{REPLACED_MARK}", dir=path.parent))
    os.replace(path, trash / path.name)
    return trash


def discard(trash: Path) -> None:
    """Delete what ``set_aside`` moved away (symlinks inside are removed, never followed)."""
    shutil.rmtree(trash, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file in the same folder and an atomic rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}{STAGING_MARK}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temp file path beside ``target`` (same suffix, so writers that go by the extension
    work); when the block succeeds, the file replaces ``target`` in one rename."""
    target = Path(target)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}{STAGING_MARK}", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
        yield Path(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class RunLock:
    """An exclusive lock on a run directory, held by this process until ``release``.

    The lock is an OS file lock (``filelock``) on ``.kbit.lock``: the kernel drops it when its process
    dies, so a killed run never blocks the next one and two live processes can never both hold it.
    The file's content (pid and host of the holder) only serves the refusal message.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._lock: Any = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> None:
        """Take the lock, or raise ``ConfigError`` naming the live process that holds it."""
        import filelock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            owner = self._owner()
            who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
            raise ConfigError(
                f"run directory {self.path.parent} is in use by {who}; wait for it or choose another --output"
            ) from None
        self._lock = lock
        with open(self.path, "w", encoding="utf-8") as handle:  # same inode: the OS lock stays
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)

    def _owner(self) -> dict[str, Any]:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def release(self) -> None:
        """Drop the lock and its file. Never raises: a failing release must not hide the real error."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            self._lock.release()
        self._lock = None


def take_over(target: Path, lock: RunLock, replace: bool) -> Path | None:
    """Take ``lock`` on ``target``; with ``replace``, first move what ``target`` holds to a hidden sibling
    (``set_aside``) and return that path. A folder is moved only while its own lock is held, so a live
    kbit process's folder is refused (``ConfigError``), never moved from under it; a plain file the user
    chose to overwrite is moved as it is.
    """
    target = Path(target)
    replaced = None
    if replace and target.exists():
        if target.is_dir():
            previous = RunLock(target)
            previous.acquire()
            replaced = set_aside(target)
            previous.release()
        else:
            replaced = set_aside(target)
    lock.acquire()
    return replaced


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
