"""Output targets: the one rule every command that writes a folder or file follows.

Checked before any work, so a refused command writes nothing. "Inside" and "holds" are judged on
real paths, every component resolved.

1. The working directory and its ancestors are never a target.
2. Outputs are never nested: no target lies inside another kbit output (a run, a quantized model,
   an eval report, a comparison), whether it exists yet or not. The only nesting is kbit's own: an
   artifact inside the run the command works on (``home``: a run's ``quantized/``, ``gguf/``), and a
   comparison's ``runs/<method>`` (runs) and ``evals/<name>`` (reports).
3. A link inside a kbit output is never followed to a target (a comparison's ``runs/`` included),
   ``--overwrite`` or not. A target that is itself a link is followed only to this command's own output.
4. A target that does not exist, or an empty folder, is free.
5. Never replaced or deleted, ``--overwrite`` or not:
   - the command's own inputs (``--model``, ``--dataset``, the run or model it reads, and what that
     run was made from), or a folder holding one;
   - another command's output (a report is never replaced by a run, nor a quantized model by a report);
   - a folder holding another kbit output anywhere inside it (a run inside a report, inside a
     quantized model, inside a plain folder), save what a comparison keeps in its own runs/ and evals/;
   - a kbit run, and anything inside a run that is not this command's own artifact.
6. The command's own earlier output of the same kind (``is_own``) may be replaced: reports by
   ``kbit eval``, a quantized model by ``kbit quantize``, a run by ``kbit train --overwrite`` — only while it holds
   nothing but what kbit wrote there (``WRITTEN``; a quantized model's record lists its files): a marker file does
   not make a folder of the user's kbit's, and files added to an output are never deleted with it.
7. A folder of anything else (a model folder, other data, a home folder) is refused, ``--overwrite`` or
   not: kbit deletes no folder it did not write. A plain file is replaced only with ``--overwrite``.

Replacing happens only after the new output is complete (``kbit.core.runs.folder.atomic_directory``),
and never follows a symlink inside what it replaces.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from kbit.core.errors import ConfigError
from kbit.core.runs.stamps import FILENAME
from kbit.core.runs.record import read_record, recorded_kind
from kbit.core.runs.folder import LOCK_NAME, REPLACED_MARK, STAGING_MARK

def kbit_kind(path: Path) -> str | None:
    """The ``kind`` of the kbit output at ``path`` ("run", "quantized", "eval" …), or None if it is none.

    An unreadable record or report still marks the folder as kbit's: its kind is "unknown".
    """
    kind = recorded_kind(path)
    if kind is not None:
        return kind
    file = Path(path) / "report.json"
    if os.path.isfile(file):  # False, not an OSError, for a name too long to exist
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return "unknown"
        return str(data.get("kind") or "unknown") if isinstance(data, dict) else "unknown"
    return None


def enclosing_run(path: Path) -> Path | None:
    """The kbit run folder that ``path`` is, or lies inside of; None when there is none."""
    for candidate in (Path(path), *Path(path).parents):
        if kbit_kind(candidate) == "run":
            return candidate
    return None


LABELS = {"run": "run", "quantized": "quantized model", "eval": "report", "compare": "comparison"}
# The only outputs kbit nests itself (rule 2): a comparison keeps its runs and their reports inside it.
NESTED = {"compare": {"runs": "run", "evals": "eval"}}


def output_kind(path: Path) -> str | None:
    """``kbit_kind``, except that a ``report.json`` of another tool (no kbit kind in it) is not kbit's."""
    kind = kbit_kind(path)
    if kind is None or recorded_kind(path) is not None:
        return kind
    return kind if kind in ("eval", "compare") else None


def _label(kind: str | None) -> str:
    return f"kbit {LABELS.get(kind or '', 'output')}"


def claim(target: Path, *, is_own: Callable[[Path], bool], kind: str, overwrite: bool = False,
          flag: str = "--output", what: str = "output", inputs: Iterable[str | Path | None] = (),
          home: Path | None = None) -> Path:
    """Check ``target`` against the rules above; returns the real path to write to.

    :param is_own: whether an existing real path holds this command's own earlier output of the same kind.
    :param kind: the kind of output the command writes ("run", "eval", "quantized", "compare", "export"),
        for the nesting kbit allows (``NESTED``).
    :param overwrite: the user passed ``--overwrite`` (rule 7).
    :param flag: the option that named the target, for the message.
    :param inputs: what the command reads (paths, or references such as hub ids, which are skipped).
    :param home: the kbit output the target may lie inside: the run whose artifact this is (rule 2).
    """
    target = Path(target).expanduser()
    _check_name_lengths(target, flag)
    real = target.resolve()
    here = Path.cwd().resolve()
    if real == here or real in here.parents:
        raise ConfigError(f"{flag} {target} is the working directory or contains it; choose a new folder")
    check_no_link_inside_output(target, flag)
    _check_not_nested(target, real, kind, home, flag, what)
    if not os.path.lexists(target) or (real.is_dir() and not target.is_symlink()
                                       and all(p.name == LOCK_NAME for p in real.iterdir())):
        return real  # free: absent, or empty but for the lock file a finished kbit command left
    if target.is_symlink() and not os.path.exists(target):
        raise ConfigError(f"{flag} {target} is a broken symlink; remove it or choose another path")
    own = is_own(real)
    if not own:
        run = enclosing_run(real)
        if run is not None:
            inside = "is the kbit run" if run == real else f"lies inside the kbit run {run}"
            raise ConfigError(f"{flag} {target} {inside}; a run is never the {what} of another command — "
                              "choose a new path")
    _check_not_an_input(target, real, inputs, flag)
    if not own and target.is_symlink():
        raise ConfigError(f"{flag} {target} is a symlink to {real}, which holds other data; "
                          "pass a path that is not a link")
    other = None if own or not real.is_dir() else output_kind(real)
    if other is not None:
        raise ConfigError(f"{flag} {target} is the {_label(other)} another kbit command wrote; a {what} never "
                          "replaces another command's output, --overwrite or not — choose another path")
    held = held_output(real, own)
    if held is not None:
        raise ConfigError(f"{flag} {target} holds the {_label(output_kind(held))} {held}; a folder holding another "
                          "kbit output is never replaced — move that out first or choose another path")
    if own and real.is_dir() and (other_files := unwritten(real, kind)) is not None:
        raise ConfigError(f"{flag} {target} is an earlier {_label(kind)} but {other_files}, or choose another path; "
                          "kbit replaces only what it wrote")
    if not own and real.is_dir():
        raise ConfigError(f"{flag} {target} already holds other data, not written by this command; kbit never deletes "
                          "a folder of someone else's files, --overwrite or not — choose a new path, or move them out first")
    if not own and not overwrite:
        raise ConfigError(f"{flag} {target} is a file, not written by this command; choose another path "
                          "or pass --overwrite to replace it")
    return real


# What each kind of kbit folder holds at its top level as kbit writes it (a quantized model's own record lists its
# files): anything else there is the user's, and a folder holding it is never replaced.
WRITTEN = {"eval": frozenset({"report.json", "report.md", "report.png", "predictions.jsonl"}),
           "run": frozenset({FILENAME, "README.md", "train.log", "loss.png", "adapter", "merged", "quantized", "gguf",
                             "checkpoints"})}


def unwritten(folder: Path, kind: str) -> str | None:
    """None when the kbit ``kind`` output ``folder`` holds at its top only what kbit wrote there (its lock and staging
    leftovers aside), else what else it holds, said as the end of "… is an earlier report but …"."""
    written = WRITTEN.get(kind)
    if kind == "quantized":
        record = read_record(folder)
        if record is None:  # a run's quantized/, replaced under the run's lock as the run's own artifact
            return None
        listed = record.quantize.files if record.quantize is not None else None
        if not listed:
            return "its record lists no files (an older kbit wrote it): remove it yourself"
        written = frozenset(listed)
    if written is None:
        return None
    foreign = sorted(entry.name for entry in os.scandir(folder) if entry.name not in written and entry.name != LOCK_NAME
                     and STAGING_MARK not in entry.name and REPLACED_MARK not in entry.name)
    if not foreign:
        return None
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return f"also holds {shown}, which kbit did not write: move those out first"


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems alike


def _check_name_lengths(target: Path, flag: str) -> None:
    """Refuse a path with a component longer than file systems allow (an ``OSError`` deep in the
    writing otherwise, worded as a disk problem)."""
    for part in target.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise ConfigError(f"{flag} {target}: the name {part[:24]}… is {size} bytes long, and file systems allow "
                              f"{NAME_MAX}; choose a shorter name")


def check_no_link_inside_output(path: Path, flag: str) -> None:
    """Refuse ``path`` when a component of it below a kbit output is a symlink (rule 3): kbit never
    reaches what it writes or replaces through a link inside its own outputs."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    owner = None
    for prefix in (*reversed(path.parents), path):
        if owner is not None and prefix.is_symlink():
            raise ConfigError(f"{flag} {path} is reached through the symlink {prefix} inside the "
                              f"{_label(output_kind(owner))} {owner}; kbit never follows a link inside its outputs — "
                              "replace the link by a real folder or choose another path")
        if owner is None and output_kind(prefix) is not None:
            owner = prefix


def _check_not_nested(target: Path, real: Path, kind: str, home: Path | None, flag: str, what: str) -> None:
    """Refuse a ``real`` path inside another kbit output (rule 2)."""
    home = Path(home).resolve() if home is not None else None
    for parent in real.parents:
        if parent == home:
            return  # the command's own run: where inside it is the caller's rule
        owner = output_kind(parent)
        if owner is None:
            continue
        relative = real.relative_to(parent).parts
        if len(relative) == 2 and NESTED.get(owner, {}).get(relative[0]) == kind:
            return
        raise ConfigError(f"{flag} {target} lies inside the {_label(owner)} {parent}, which another kbit command "
                          f"wrote; a {what} never goes inside another command's output — choose a path outside it")


def _check_not_an_input(target: Path, real: Path, inputs: Iterable[str | Path | None], flag: str) -> None:
    """Refuse a target that is, or holds, something the command reads (rule 5)."""
    for reference in inputs:
        if reference is None or not os.path.lexists(Path(reference).expanduser()):
            continue  # a hub id, a built-in dataset name
        read = Path(reference).expanduser().resolve()
        if read == real or real in read.parents:
            relation = "is" if read == real else "holds"
            raise ConfigError(f"{flag} {target} {relation} {reference}, which this command reads; "
                              "choose another path")


def held_output(folder: Path, own: bool = False) -> Path | None:
    """The first kbit output found inside ``folder`` (not ``folder`` itself; links are not followed),
    or None. With ``own``, what ``folder``'s kind nests itself (a comparison's runs/, evals/) is skipped."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return None
    skipped = set(NESTED.get(output_kind(folder) or "", {})) if own else set()
    for root, dirs, files in os.walk(folder):
        if Path(root) == folder:
            dirs[:] = [d for d in dirs if d not in skipped]
        elif FILENAME in files or ("report.json" in files and output_kind(Path(root)) is not None):
            return Path(root)
    return None
