import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kbit.core.errors import ConfigError, PluginError, Terminated
from kbit.core.runs.record import RunRecord, read_record, write_record
from kbit.core.runs.folder import (LOCK_NAME, RunFolder, RunLock, atomic_directory, atomic_file, check_writable,
                              clear_staging, current_umask, write_json_atomic)


def test_atomic_directory_appears_only_complete(tmp_path):
    target = tmp_path / "adapter"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "half.bin").write_text("x")
            raise RuntimeError("killed mid-save")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(target) as staging:
        (staging / "whole.bin").write_text("x")
    assert [p.name for p in target.iterdir()] == ["whole.bin"]
    with atomic_directory(target) as staging:  # replacing keeps the old one until the new one is whole
        (staging / "new.bin").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_atomic_file_replaces_the_target_only_when_written_whole(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as staging:
            assert staging.suffix == ".md" and staging.parent == tmp_path
            staging.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    with atomic_file(target) as staging:
        staging.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_clear_staging_removes_only_what_a_killed_writer_left(tmp_path):
    (tmp_path / "merged").mkdir()
    (tmp_path / ".merged.tmp-abc").mkdir()
    (tmp_path / ".merged.tmp-abc" / "model.safetensors").write_text("half")
    (tmp_path / ".adapter.old-xyz").mkdir()
    (tmp_path / ".kbit.json.tmp-123").write_text("{")
    (tmp_path / LOCK_NAME).write_text("{}")
    (tmp_path / "kbit.json").write_text("{}")
    assert clear_staging(tmp_path) == [".adapter.old-xyz", ".kbit.json.tmp-123", ".merged.tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_NAME, "kbit.json", "merged"])


def test_write_json_atomic_survives_a_serialisation_error(tmp_path):
    path = tmp_path / "kbit.json"
    write_json_atomic(path, {"status": "running"})
    circular: dict = {"status": "finished"}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic(path, circular)
    assert json.loads(path.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["kbit.json"]


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".kbit.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    second = RunLock(tmp_path)
    second.acquire()
    assert json.loads((tmp_path / ".kbit.lock").read_text())["pid"] == os.getpid()
    second.release()
    assert not (tmp_path / ".kbit.lock").exists()


def test_an_empty_lock_file_is_taken_over(tmp_path):
    (tmp_path / ".kbit.lock").write_text("")
    lock = RunLock(tmp_path)
    lock.acquire()
    assert lock.held
    lock.release()


HOLD = """
import sys, time
from kbit.core.runs.folder import RunLock
lock = RunLock(sys.argv[1])
try:
    lock.acquire()
except Exception:
    print("refused", flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_two_live_processes_never_both_hold_the_lock(tmp_path):
    racers = [subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "5"], stdout=subprocess.PIPE, text=True)
              for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["held", "refused", "refused", "refused"]


def test_release_removes_the_folders_acquire_created_only_while_they_are_empty(tmp_path):
    unused = RunLock(tmp_path / "runs" / "refused")
    unused.acquire()
    unused.release()
    assert list(tmp_path.iterdir()) == []  # no empty runs/ left by a command that wrote nothing
    used = RunLock(tmp_path / "runs" / "run")
    used.acquire()
    (tmp_path / "runs" / "run" / "kbit.json").write_text("{}")
    used.release()
    assert [p.name for p in (tmp_path / "runs" / "run").iterdir()] == ["kbit.json"]
    mine = tmp_path / "mine"
    mine.mkdir()
    existing = RunLock(mine)
    existing.acquire()
    existing.release()
    assert mine.is_dir()  # a folder that was there before is never removed


def test_release_never_raises_when_the_lock_file_cannot_be_removed(tmp_path):
    lock = RunLock(tmp_path / "run")
    lock.acquire()
    lock.path.unlink()
    lock.path.mkdir()  # unlink() now fails with an OSError, as on a folder made read-only
    lock.release()
    assert not lock.held


def test_atomic_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "merged") as staging:
            (staging / "weights").write_text("w")
        write_json_atomic(tmp_path / "kbit.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "kbit.json").stat().st_mode & 0o777 == 0o644


def test_what_libraries_write_0600_into_an_artifact_follows_the_umask(tmp_path):
    """safetensors (like mkstemp) makes 0600 files whatever the umask; the artifact gets the umask's modes."""
    import tempfile

    import torch
    from safetensors.torch import save_file

    previous = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "adapter") as staging:
            (staging / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(staging / "sub" / "adapter_model.safetensors"))
            (staging / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(staging / "run.sh", 0o700)
        with atomic_file(tmp_path / "model.gguf") as temp:  # a writer that renames its own temp file over it
            fd, own = tempfile.mkstemp(dir=tmp_path)
            os.close(fd)
            os.replace(own, temp)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"adapter": 0o750, "sub": 0o750, "adapter_model.safetensors": 0o640, "run.sh": 0o750,
                     "model.gguf": 0o640}


def test_a_full_disk_is_named_by_the_artifact_being_written(tmp_path):
    import errno

    with pytest.raises(OSError) as raised, atomic_directory(tmp_path / "merged"):
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "merged")
    with pytest.raises(OSError) as raised, atomic_file(tmp_path / "x.gguf"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.filename == str(tmp_path / "x.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_check_writable_refuses_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_writable(blocker / "run", min_free_bytes=0)
    with pytest.raises(ConfigError, match="MiB free"):
        check_writable(tmp_path / "run", min_free_bytes=1 << 60)
    check_writable(tmp_path / "run", min_free_bytes=1)
    assert not (tmp_path / "run").exists()


def _a_finished_run(folder):
    folder.mkdir()
    write_record(folder, RunRecord(name="old", status="finished"))
    (folder / "adapter").mkdir()
    (folder / ".merged.tmp-abc").mkdir()  # what killed writers left
    (folder / "gguf").mkdir()
    (folder / "gguf" / ".run-q4_0.gguf.tmp-xyz.gguf").write_bytes(b"GGUF")
    return folder


def test_a_run_folder_is_owned_from_claim_to_release(tmp_path):
    run = _a_finished_run(tmp_path / "run")
    with RunFolder(run) as folder:
        assert folder.removed == [".merged.tmp-abc", "gguf/.run-q4_0.gguf.tmp-xyz.gguf"] and (run / LOCK_NAME).exists()
        assert list((run / "gguf").iterdir()) == []
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}.*choose another --output"):
            RunFolder(run).__enter__()
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()} on .*; wait for it to finish$"):
            RunFolder(run, flag=None).__enter__()  # the run is a command's input (export, --resume): no other to choose
        assert folder.read_record().name == "old"  # read while no other writer can change it
    assert not (run / LOCK_NAME).exists() and (run / "adapter").is_dir()


@pytest.mark.parametrize("stop, status", [(RuntimeError("disk on fire"), "failed"), (KeyboardInterrupt(), "interrupted"),
                                          (Terminated(15), "interrupted")])
def test_a_stopped_command_records_why_and_keeps_what_it_replaced(tmp_path, stop, status):
    run = _a_finished_run(tmp_path / "run")
    with pytest.raises(type(stop)):
        with RunFolder(run, replace=True) as folder:
            assert list(run.iterdir()) == [run / LOCK_NAME]  # the old content is moved aside, not deleted
            folder.record = RunRecord(name="new")
            write_record(run, folder.record)
            raise stop
    record = read_record(run)
    assert record.name == "new" and record.status == status and type(stop).__name__ in record.error
    assert record.wall_time_s is not None and not (run / LOCK_NAME).exists()
    [kept] = [p for p in tmp_path.iterdir() if p.name.startswith(".run.old-")]
    assert (kept / "run" / "adapter").is_dir()


@pytest.mark.parametrize("existed", [False, True])
def test_input_refused_while_provisional_leaves_nothing_and_puts_back_what_was_replaced(tmp_path, existed):
    run = tmp_path / "runs" / "run"
    if existed:
        run.parent.mkdir()
        _a_finished_run(run)
    with pytest.raises(ConfigError, match="no layer quantized"):
        with RunFolder(run, replace=existed, provisional=True) as folder:
            folder.record = RunRecord(name="new")
            write_record(run, folder.record)
            (run / "checkpoints").mkdir()
            raise ConfigError("no layer quantized")
    if existed:  # the earlier run, as it was
        assert read_record(run).name == "old" and (run / "adapter").is_dir() and not (run / LOCK_NAME).exists()
        assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
    else:  # not even the folders the command created
        assert not (tmp_path / "runs").exists()
    with pytest.raises(PluginError):  # a plugin's broken hook is refused input too
        with RunFolder(tmp_path / "plugin", provisional=True) as folder:
            folder.record = RunRecord(name="new")
            write_record(tmp_path / "plugin", folder.record)
            raise PluginError("method 'x' (kbit-x 0.1): hook quantize_base raised ValueError")
    assert not (tmp_path / "plugin").exists()
    with pytest.raises(RuntimeError):  # anything else is a failure of the command, recorded as such
        with RunFolder(tmp_path / "kept", provisional=True) as folder:
            folder.record = RunRecord(name="new")
            raise RuntimeError("out of memory")
    assert read_record(tmp_path / "kept").status == "failed"


def test_a_replaced_folder_is_deleted_only_once_the_command_succeeded(tmp_path):
    run = _a_finished_run(tmp_path / "run")
    seen = []
    with RunFolder(run, replace=True, flag="--out") as folder:
        folder.on_stop = seen.append
        write_record(run, RunRecord(name="new", status="finished"))
    assert seen == [] and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert read_record(run).name == "new" and not (run / "adapter").exists()


def test_an_exclusive_file_never_replaces_one_another_command_wrote_meanwhile(tmp_path):
    target = tmp_path / "out.gguf"
    with pytest.raises(ConfigError, match="was written by someone else while this command ran; it is kept"):
        with atomic_file(target, exclusive=True) as temp:
            temp.write_text("mine")
            target.write_text("theirs")  # the other command finished first
    assert target.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["out.gguf"]
    fresh = tmp_path / "fresh.gguf"
    with atomic_file(fresh, exclusive=True) as temp:
        temp.write_text("mine")
    assert fresh.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["fresh.gguf", "out.gguf"]


def _appear(target: Path, what: str) -> None:
    """What the user puts at ``target`` while a command works: a folder of notes, a file, an empty folder."""
    if what == "file":
        target.write_text("mine")
        return
    target.mkdir()
    if what == "folder":
        (target / "notes.txt").write_text("mine")


@pytest.mark.parametrize("appeared", ["folder", "file"])
def test_an_exclusive_folder_never_replaces_what_appeared_meanwhile(tmp_path, appeared):
    target = tmp_path / "report"
    with pytest.raises(ConfigError, match="was written by someone else while this command ran; it is kept"):
        with atomic_directory(target, exclusive=True) as staging:
            (staging / "report.json").write_text("{}")
            _appear(target, appeared)
    kept = target / "notes.txt" if appeared == "folder" else target
    assert kept.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["report"]
    empty = tmp_path / "empty"  # an empty folder holds nothing to lose: it is written into
    with atomic_directory(empty, exclusive=True) as staging:
        (staging / "report.json").write_text("{}")
        _appear(empty, "empty")
    assert [p.name for p in empty.iterdir()] == ["report.json"]


@pytest.mark.parametrize("raised", [
    OSError(28, "No space left on device"),
    RuntimeError("safetensors: No space left on device (os error 28)"),
    OSError("8704 requested and 5920 written"),  # numpy's tofile, which gguf's writer calls
])
def test_a_full_disk_is_named_by_the_path_however_a_library_words_it(tmp_path, raised):
    from kbit.core.runs.folder import disk_full

    full = disk_full(raised, tmp_path / "x.gguf")
    assert full.errno == 28 and full.filename in (str(tmp_path / "x.gguf"), None)
    assert disk_full(ValueError("8704 requested"), tmp_path) is None


def test_a_file_name_of_the_longest_legal_length_is_written_through_its_temporary_sibling(tmp_path):
    target = tmp_path / ("ü" * 120 + "x" * 6 + ".gguf")  # 251 bytes: the sibling keeps its room for the mark
    with atomic_file(target) as temp:
        temp.write_text("data")
    assert target.read_text() == "data" and [p.name for p in tmp_path.iterdir()] == [target.name]
