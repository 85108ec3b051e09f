"""``kbit push``: upload a run's artifact folders to the Hugging Face Hub (``create_repo`` + ``upload_folder``).

One folder chosen (``--what merged``): its contents become the repository root, so its own card is
the repository card. Several: each goes to a subfolder of the same name and the run's card is the
repository card. The plan lists exactly the files that go (``--dry-run`` prints it, ``upload_folder``
gets the same list as its allow-patterns); kbit's bookkeeping stays home: ``kbit.json`` (it records
local paths), checkpoints, locks and half-written temporary files.

A run folder is untrusted input: ``upload_folder`` reads what a link points to, so a symbolic link
anywhere in what would go (``adapter/notes.txt -> ~/.ssh/id_rsa``) and any path resolving outside the
run refuse the whole push, checked when planning and again right before the upload. Of an artifact folder
only what kbit wrote there goes (the names its record lists, and its card): a ``credentials.txt`` or a copy of
the data a user put beside the weights stays home, and the plan names it (``left_home``).
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Sequence
from pathlib import Path

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.errors import ConfigError
from kbit.core.model.sources import is_hub_id
from kbit.core.runs.record import RunRecord, read_record
from kbit.core.runs.folder import LOCK_NAME, REPLACED_MARK, STAGING_MARK

ARTIFACTS = ("adapter", "merged", "gguf", "quantized")
RUN_FILES = ("README.md", "loss.png")
# What transformers, PEFT and llm-compressor save, and kbit's card: what goes from an artifact folder whose record
# lists no files (a run an older kbit wrote).
SAVED_NAMES = ("README.md", "*.safetensors", "*.gguf", "config.json", "generation_config.json", "adapter_config.json",
               "model.safetensors.index.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
               "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "recipe.yaml")


@attrs.frozen
class PushPlan:
    """What ``push`` uploads: ``files`` are (local path, path in the repository) under ``folder``; ``left_home``
    the files of the chosen artifact folders kbit did not write, which do not go (paths relative to the run)."""

    repo_id: str
    folder: Path
    files: tuple[tuple[Path, str], ...]
    left_home: tuple[str, ...] = ()

    @property
    def size_bytes(self) -> int:
        return sum(local.stat().st_size for local, _ in self.files)


def plan_push(run: Path, repo_id: str, what: str | None) -> PushPlan:
    """Decide the upload of ``run``'s artifacts to ``repo_id``; ConfigError for bad input, before any network."""
    if "/" not in repo_id or not is_hub_id(repo_id):
        raise ConfigError(f"--repo-id '{repo_id}' is not a hub repository id; use ORG/NAME (letters, digits, - _ .)")
    run = Path(run)
    record = read_record(run) if run.is_dir() else None
    if record is None or record.kind != "run":
        raise ConfigError(f"{run} is not a kbit run (no kbit.json of kind 'run'); push uploads a run's artifacts")
    if (unfinished := record.unfinished(run)) is not None:  # not done, or judged bad by a gate: not published
        raise ConfigError(f"push uploads finished runs, and run {run} {unfinished}")
    found = {a: _files(run / a, run) for a in ARTIFACTS}
    kept = {a: _written_by_kbit(found[a], _written(record, a)) for a in ARTIFACTS}
    chosen = _choose(what, [a for a in ARTIFACTS if kept[a]], run)
    left_home = tuple(f"{a}/{f}" for a in (chosen if what else ARTIFACTS) for f in found[a] if f not in kept[a])
    if len(chosen) == 1:
        folder = run / chosen[0]
        files = [(folder / relative, relative) for relative in kept[chosen[0]]]
    else:
        folder = run
        files = [(run / name, name) for name in RUN_FILES if _own_file(run / name, run)]
        files += [(run / a / relative, f"{a}/{relative}") for a in chosen for relative in kept[a]]
    return PushPlan(repo_id, folder, tuple(files), left_home)


def _written(record: RunRecord, artifact: str) -> frozenset[str] | None:
    """The names kbit wrote at the top of the run's ``artifact`` folder, as the record lists them, with the folder's
    card; None where a run of an older kbit lists none. A record that lists its adapter's files is this kbit's: a
    folder it lists nothing for holds nothing kbit wrote (a card kbit put there describes files that do not go)."""
    if artifact == "gguf":
        listed = [Path(e.file).name for e in record.exports if e.file and Path(e.file).parent == Path(artifact)] or None
    else:
        part = {"adapter": record.train, "merged": record.merge, "quantized": record.quantize}[artifact]
        listed = None if part is None else part.adapter_files if artifact == "adapter" else part.files
    if listed is None:
        return None if record.train.adapter_files is None else frozenset()
    return frozenset([*listed, "README.md"])


def _written_by_kbit(files: list[str], written: frozenset[str] | None) -> list[str]:
    """Those of an artifact folder's ``files`` (relative paths) that kbit wrote: under a name ``written`` lists, or
    where it lists none, a file at the top named as transformers, PEFT and llm-compressor name theirs."""
    if written is None:
        return [f for f in files if "/" not in f and any(fnmatch.fnmatch(f, name) for name in SAVED_NAMES)]
    return [f for f in files if f.split("/")[0] in written]


def push(plan: PushPlan, private: bool = False) -> str:
    """Create the repository if needed and upload exactly ``plan.files``; returns the repository URL."""
    from huggingface_hub import HfApi, get_token

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it and check the network, "
                          "or use --dry-run to list the files")
    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token: run 'hf auth login' or set HF_TOKEN, then push again "
                          "(--dry-run lists the files without one)")
    for local, _ in plan.files:  # again: the folder may have changed since the plan
        _own_file(local, plan.folder)
    api = HfApi(token=token)
    try:
        url = api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=plan.repo_id, folder_path=str(plan.folder), repo_type="model",
                          allow_patterns=[glob.escape(local.relative_to(plan.folder).as_posix()) for local, _ in plan.files],
                          commit_message="Upload from kbit")
    except Exception as exc:  # offline, refused token, no rights: one line with the cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"cannot push to {plan.repo_id}: {type(exc).__name__}: {first[:200]}; "
                          "check the network, the token and your rights on the repository") from None
    return str(url)


def _choose(what: str | None, present: Sequence[str], run: Path) -> list[str]:
    if not what:
        if not present:
            raise ConfigError(f"run {run} has no artifacts to push (none of {', '.join(ARTIFACTS)})")
        return list(present)
    chosen = [w.strip() for w in what.split(",") if w.strip()]
    for name in chosen:
        if name not in ARTIFACTS:
            raise ConfigError(f"unknown --what '{name}'; choose from {', '.join(ARTIFACTS)}")
        if name not in present:
            raise ConfigError(f"run {run} has no {name}/ to push (or none of its files kbit wrote); present: "
                              f"{', '.join(present) or 'none'}")
    return list(dict.fromkeys(chosen))


def _files(folder: Path, run: Path) -> list[str]:
    """Files under ``folder`` (an artifact folder of ``run``) that belong in a repository, relative and
    sorted. ``ConfigError`` when ``folder`` or anything in it is a symbolic link or lies outside ``run``."""
    if not os.path.lexists(folder):
        return []
    _refuse_link(folder, run)
    if not folder.is_dir():
        return []
    found = []
    for top, dirs, names in os.walk(folder):  # links to folders are listed, never entered
        for name in [*dirs, *names]:
            _refuse_link(Path(top) / name, run)
        for name in names:
            path = Path(top) / name
            relative = path.relative_to(folder)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue  # hidden: locks, staging and replaced copies (.name.tmp-*, .name.old-*)
            if path.name == meta.FILENAME or path.name == LOCK_NAME or STAGING_MARK in path.name or REPLACED_MARK in path.name:
                continue
            found.append(relative.as_posix())
    return sorted(found, key=lambda relative: Path(relative).parts)


def _own_file(path: Path, root: Path) -> bool:
    """Whether ``path`` is a regular file of ``root``; ``ConfigError`` for a link or a path outside it."""
    if not os.path.lexists(path):
        return False
    _refuse_link(path, root)
    return path.is_file()


def _refuse_link(path: Path, root: Path) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}); push uploads only files inside the run, "
                          "never what a link points to: replace the link with a copy of the file or remove it")
    if not path.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"{path} resolves to {path.resolve()}, outside {root}; push uploads only files inside the run")
