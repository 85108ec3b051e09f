"""Run directories: exclusive ownership (``RunFolder``, over a lock file) and atomic artifacts (temp
sibling + rename).

A reader never sees a half-written artifact: ``adapter/``, ``merged/``, ``kbit.json`` and reports
appear only complete, with the permissions the user's umask gives any new file. A second process
pointed at a locked run is refused; a dead process holds no lock. Every command that writes into a
run or comparison folder (train, quantize, export, compare) owns it through ``RunFolder``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError, KbitError

log = logging.getLogger("kbit")

LOCK_NAME = ".kbit.lock"
STAGING_MARK = ".tmp-"  # .<artifact>.tmp-XXXX: being written; renamed into place when complete
REPLACED_MARK = ".old-"  # .<artifact>.old-XXXX: the previous version, deleted after the swap


def _sibling(name: str, mark: str) -> str:
    """The name prefix of a temporary sibling of ``name``: the name itself, cut where a long one would leave no room
    for the mark and tempfile's random part within a file name's 255 bytes."""
    short = name.encode("utf-8")[:200].decode("utf-8", errors="ignore")
    return f".{short}{mark}"


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28", "StorageFull")  # as libraries word it
PARTIAL_WRITE = re.compile(r"^\d+ requested and \d+ written$")  # numpy's tofile on a full disk (gguf's writer uses it)


def disk_full(exc: BaseException, where: Path) -> OSError | None:
    """``exc`` as the ``OSError`` of a full disk that names a path, or None when it is no such error.

    A full disk reaches kbit as ``OSError(ENOSPC)`` from a ``write`` (no file name) or as a library's
    own error (safetensors, torch); either becomes ``OSError(ENOSPC, ..., where)``, so the user is told
    where space ran out. An ``OSError`` that already names its file is returned unchanged; kbit's own
    errors are never reworded.
    """
    if isinstance(exc, KbitError):
        return None
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        return exc if exc.filename else OSError(exc.errno, os.strerror(exc.errno), str(where))
    if isinstance(exc, Exception) and (any(text in str(exc) for text in FULL_TEXTS) or PARTIAL_WRITE.search(str(exc))):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
    return None


@contextlib.contextmanager
def naming_a_full_disk(where: Path) -> Iterator[None]:
    """Raise a full disk met in the block as ``disk_full`` words it, naming ``where``."""
    try:
        yield
    except Exception as exc:
        full = disk_full(exc, where)
        if full is None or full is exc:
            raise
        raise full from exc


def overwrite_json_in_place(path: Path, data: Any) -> bool:
    """Last resort for a final status when ``write_json_atomic`` failed on a full disk: write ``data``
    compactly over ``path``'s own bytes, padded with spaces to the same length, so the filesystem needs
    no new block. Not atomic, so only for a status that would otherwise stay wrong; False when the
    compact form does not fit in the old file."""
    text = json.dumps(data, separators=(",", ":"), default=str).encode("utf-8")
    size = os.stat(path).st_size
    if len(text) + 1 > size:
        return False
    with open(path, "r+b") as handle:
        handle.write(text + b" " * (size - len(text) - 1) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return True


def follow_umask(path: Path) -> None:
    """Give ``path``, and everything in it when it is a folder, the mode the umask gives a new file or
    folder (0644 and 0755 under umask 022; executables keep their x bits).

    ``mkstemp``/``mkdtemp`` and libraries that write through private temp files (safetensors) make
    0600/0700 whatever the umask, so an artifact is set right once complete, before it is renamed
    into place. Symbolic links are left alone, never followed.
    """
    mask = current_umask()
    root = Path(path)
    entries = [root]
    if root.is_dir() and not root.is_symlink():
        for top, dirs, names in os.walk(root):  # links to folders are listed in dirs, never entered
            entries += [Path(top) / name for name in (*dirs, *names)]
    for entry in entries:
        mode = os.lstat(entry).st_mode
        if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and mode & stat.S_IXUSR):
            os.chmod(entry, 0o777 & ~mask)
        elif stat.S_ISREG(mode):
            os.chmod(entry, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_directory(target: Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield an empty temp sibling of ``target``; on success it replaces ``target`` in one rename.
    ``exclusive`` (``target`` was absent or an empty folder when the command claimed it): whatever appeared there
    meanwhile is kept and the command refused (``ConfigError``), rather than set aside and deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_sibling(target.name, STAGING_MARK), dir=target.parent))
    try:
        with naming_a_full_disk(target):
            yield staging
        follow_umask(staging)
        if exclusive:
            try:  # a rename replaces an empty folder at most: a file or a folder with files in it is refused
                os.rename(staging, target)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    raise
                raise ConfigError(f"{target} was written by someone else while this command ran; it is kept as it is "
                                  "and nothing of this command was: choose another path and run it again") from None
        elif os.path.lexists(target):
            trash = set_aside(target)
            os.replace(staging, target)
            discard(trash)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_free(path: Path) -> bool:
    """Whether ``path`` is absent or an empty folder (not a link): a claimed output written only if it stays so."""
    path = Path(path)
    return not os.path.lexists(path) or (path.is_dir() and not path.is_symlink() and not any(path.iterdir()))


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
    trash = Path(tempfile.mkdtemp(prefix=_sibling(path.name, REPLACED_MARK), dir=path.parent))
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
    with naming_a_full_disk(path):
        fd, temp = tempfile.mkstemp(prefix=_sibling(path.name, STAGING_MARK), dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600 whatever the umask
        with naming_a_full_disk(path), os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_file(target: Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temp file path beside ``target`` (same suffix, so writers that go by the extension
    work); when the block succeeds, the file replaces ``target`` in one rename. ``exclusive``: the file
    becomes ``target`` only if nothing is there yet (a hard link, which fails on an existing name: another
    command that wrote ``target`` meanwhile is refused rather than silently replaced)."""
    target = Path(target)
    fd, temp = tempfile.mkstemp(prefix=_sibling(target.name, STAGING_MARK), suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        with naming_a_full_disk(target):
            yield Path(temp)
        follow_umask(Path(temp))  # after the block: a writer may have replaced the file with its own temp file
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        if not exclusive:
            os.replace(temp, target)
        else:
            try:
                os.link(temp, target)
            except FileExistsError:
                raise ConfigError(f"{target} was written by someone else while this command ran; it is kept as it is "
                                  "and nothing of this command was: choose another path, or run it again with "
                                  "--overwrite") from None
            except OSError:  # a file system without hard links (FAT, some network shares): the plain rename
                os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class RunLock:
    """An exclusive lock on a run directory, held by this process until ``release``.

    The lock is an OS file lock (``filelock``) on ``.kbit.lock``: the kernel drops it when its process
    dies, so a killed run never blocks the next one and two live processes can never both hold it.
    The file's content (pid and host of the holder) only serves the refusal message. The folders
    ``acquire`` had to create (the run folder, ``runs/``) are removed again by ``release`` when the
    command left them empty: a command refused or stopped before it wrote anything leaves no trace.
    """

    def __init__(self, run_dir: Path, flag: str | None = "--output") -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.flag = flag  # the option that chooses another folder, named in the refusal (None: the folder is an input)
        self._lock: Any = None
        self._created: list[Path] = []  # deepest first

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> None:
        """Take the lock, or raise ``ConfigError`` naming the live process that holds it."""
        import filelock

        created = [p for p in (self.path.parent, *self.path.parent.parents) if not os.path.lexists(p)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            owner = self._owner()
            who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
            raise ConfigError(
                f"{self.path.parent} is in use by {who}; wait for it"
                + (f" or choose another {self.flag}" if self.flag else " to finish")
            ) from None
        self._lock = lock
        self._created = created
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
        for folder in self._created:
            with contextlib.suppress(OSError):  # not empty: the command wrote there, so it stays
                folder.rmdir()
        self._created = []


def take_over(target: Path, lock: RunLock, replace: bool) -> Path | None:
    """Take ``lock`` on ``target``; with ``replace``, first move what ``target`` holds to a hidden sibling
    (``set_aside``) and return that path. A folder is moved only while its own lock is held, so a live
    kbit process's folder is refused (``ConfigError``), never moved from under it; a plain file the user
    chose to overwrite is moved as it is. Nothing is moved that is reached through a symlink (in any
    component of ``target``): what the output rule checked must be what is moved.
    """
    target = Path(target)
    replaced = None
    if replace and target.resolve() != Path(os.path.abspath(target)):
        raise ConfigError(f"{target} is reached through a symlink ({target.resolve()}); kbit replaces only a "
                          "folder named by its real path — pass that path or choose another")
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


class RunFolder:
    """One command's ownership of a run (or comparison) folder, from claim to release.

    ``with RunFolder(path, replace=...) as folder:`` takes the folder's lock — with ``replace``, first
    moving what it holds aside (``take_over``) — and deletes what a killed writer left in it and in
    its subfolders (``clear_staging``; ``folder.removed`` names it). ``folder.read_record()`` reads ``kbit.json`` as
    it is now that no other writer can change it.

    When the block raises, with signals held and a full disk reported as ``disk_full`` words it:
    ``folder.record`` (the run's record, once the command set it) is written with status "failed"
    (or "interrupted" for Ctrl-C and SIGTERM), the error and the wall time since ``started``;
    ``folder.on_stop(exc)`` runs where a command records its end elsewhere (a comparison's report);
    the replaced content is kept and its place logged. The lock is always released; the replaced
    content is deleted once the block succeeded.

    ``provisional``: a new folder (empty when claimed, or its old content set aside) whose block may still
    refuse its input. While it stays true, a refusal (a ``KbitError`` of exit code 2: bad input, a plugin's
    broken hook) undoes the command: what it wrote is deleted and set-aside content put back, so bad input
    found late (once the model loaded) leaves nothing behind. The command sets it false once it starts work
    worth keeping (training).
    """

    def __init__(self, path: Path, *, replace: bool = False, flag: str | None = "--output",
                 started: float | None = None, provisional: bool = False) -> None:
        self.path = Path(path)
        self.replace = replace
        self.provisional = provisional
        self.started = time.time() if started is None else started
        self.record: Any = None  # a kbit.core.runs.record.RunRecord
        self.on_stop: Callable[[BaseException], None] | None = None
        self.removed: list[str] = []
        self._lock = RunLock(self.path, flag)
        self._replaced: Path | None = None

    def __enter__(self) -> RunFolder:
        self._replaced = take_over(self.path, self._lock, replace=self.replace)
        try:  # in the folder and its artifact folders (a GGUF is staged inside gguf/), never through a link
            self.removed = clear_staging(self.path) + [
                f"{sub.name}/{name}" for sub in sorted(self.path.iterdir())
                if sub.is_dir() and not sub.is_symlink() and not sub.name.startswith(".")
                for name in clear_staging(sub)]
        except BaseException:
            self._lock.release()
            raise
        return self

    def read_record(self) -> Any:
        """The folder's ``RunRecord`` as it is now (None without ``kbit.json``)."""
        from kbit.core.runs.record import read_record

        return read_record(self.path)

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        from kbit.core.system.signals import signals_held

        full = None if exc is None else disk_full(exc, self.path)  # a write that failed without saying where
        if isinstance(exc, KbitError) and exc.exit_code == 2 and self.provisional:  # bad input, a plugin's included
            self._undo()
            return False
        try:
            if exc is not None:
                with signals_held():  # a second Ctrl-C or SIGTERM must not cut the status short
                    if self.record is not None:
                        from kbit.core.runs.record import write_stopped

                        write_stopped(self.path, self.record, full or exc, self.started)
                    if self.on_stop is not None:
                        self.on_stop(full or exc)
                if self._replaced is not None:
                    log.warning("the previous content of %s is kept in %s", self.path, self._replaced)
        finally:
            with signals_held():
                self._lock.release()
        if exc is None and self._replaced is not None:
            discard(self._replaced)
        if full is not None and full is not exc:
            raise full from exc
        return False

    def _undo(self) -> None:
        """Delete what the command wrote (the folder held nothing else), release it, and put back what was set aside."""
        from kbit.core.system.signals import signals_held

        with signals_held():
            for entry in self.path.iterdir():
                if entry.name == LOCK_NAME:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            self._lock.release()
            if self._replaced is not None:
                os.replace(self._replaced / self.path.name, self.path)
                discard(self._replaced)
                (self.path / LOCK_NAME).unlink(missing_ok=True)  # taken to set it aside, released once it had moved


def check_writable(directory: Path, min_free_bytes: int, flag: str = "--output", needs: str = "the run needs") -> None:
    """Fail before the work when ``directory`` cannot be created or written, or has too little space;
    the message names ``flag``, the option that chooses another place."""
    directory = Path(directory)
    existing = next((p for p in (directory, *directory.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise ConfigError(f"output directory {directory} cannot be created: {existing} is a file")
    try:  # os.access says yes to root even on read-only mounts, so really write
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {directory} is not writable ({exc.strerror}); choose another {flag}") from None
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        raise ConfigError(
            f"only {free / 2**20:.0f} MiB free under {existing}; {needs} about {min_free_bytes / 2**20:.0f} MiB; "
            f"free some space or choose another {flag}"
        )
