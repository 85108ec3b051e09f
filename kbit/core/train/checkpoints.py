"""Training checkpoints a resume can trust.

The Trainer writes ``checkpoint-N/`` file by file (adapter, optimizer, scheduler, RNG state,
``trainer_state.json``), so a kill in the middle leaves a folder that looks like a checkpoint but is
not one. ``SealCheckpoints`` writes a seal file into each checkpoint once the Trainer has finished it;
a resume starts from the newest sealed checkpoint and deletes the unsealed ones after it.
A sealed checkpoint damaged since (a truncated adapter, a broken ``trainer_state.json``, an optimizer,
scheduler or RNG state that does not load as plain tensors) is deleted too, with a line saying why,
and the resume falls back to the previous one (``damage``); no code a checkpoint holds is ever run.
Checkpoints of runs written before seals existed (kbit 0.1) count as complete when every file the
Trainer writes is there.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kbit.core.runs.folder import follow_umask

SEAL = "kbit-complete"
PREFIX = "checkpoint-"
_LEGACY_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_config.json")


class SealCheckpoints(TrainerCallback):
    """After the Trainer has written (and rotated) a checkpoint, mark it complete."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            follow_umask(folder)  # safetensors and torch.save write 0600 whatever the umask
            (folder / SEAL).write_text(json.dumps({"global_step": state.global_step}), encoding="utf-8")


def _step(folder: Path) -> int:
    match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def _checkpoints(root: Path) -> list[Path]:
    """The Trainer's checkpoint folders under ``root``, newest first (a link is none: never read or deleted)."""
    found = [p for p in Path(root).glob(f"{PREFIX}*") if p.is_dir() and not p.is_symlink() and _step(p) >= 0]
    return sorted(found, key=_step, reverse=True)


def is_complete(folder: Path, sealed_run: bool) -> bool:
    """A sealed checkpoint, or (for a run that never sealed one) one with every file the Trainer writes."""
    if (folder / SEAL).is_file():
        return True
    return not sealed_run and all((folder / name).is_file() for name in _LEGACY_FILES)


INCOMPLETE = "left half-written by the interrupted run"


def resumable(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint under ``root`` a resume can start from (complete and undamaged, see
    ``damage``), or None; and each newer one that cannot be, with why."""
    checkpoints = _checkpoints(root)
    sealed_run = any((c / SEAL).is_file() for c in checkpoints)
    passed: list[tuple[Path, str]] = []
    for folder in checkpoints:
        problem = INCOMPLETE if not is_complete(folder, sealed_run) else damage(folder)
        if problem is None:
            return folder, passed
        passed.append((folder, problem))
    return None, passed


def last_complete(root: Path) -> Path | None:
    """The newest checkpoint under ``root`` a resume can start from, or None."""
    return resumable(root)[0]


def remove_incomplete(root: Path) -> list[str]:
    """Delete the checkpoints newer than the one a resume starts from: a kill's half-written leftovers
    and checkpoints damaged since they were sealed (a resume falls back to the previous one).

    Call only while holding the run's lock. Returns one line per checkpoint removed, saying why.
    """
    keep, passed = resumable(root)
    lines = []
    for folder, problem in passed:
        shutil.rmtree(folder)
        if problem == INCOMPLETE:
            lines.append(f"removed {folder.name}, {INCOMPLETE}")
        else:
            instead = f"resuming from {keep.name} instead" if keep else "no earlier checkpoint is usable"
            lines.append(f"removed {folder.name}: {problem}; {instead}")
    return lines


# What the Trainer loads from a checkpoint besides its adapter, each with torch.load(weights_only=True).
_TENSOR_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth")


def damage(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be resumed from, or None when every file it is resumed
    from reads back: its trainer state, its adapter weights, and its optimizer, scheduler and RNG
    states as plain tensors (a file that needs pickled code to load is refused, never run)."""
    try:
        state = trainer_state(folder)
    except ValueError as exc:
        return f"its trainer_state.json is damaged ({exc})"
    if state["global_step"] != _step(folder):
        return f"its trainer_state.json records step {state['global_step']}, not {_step(folder)}"
    problem = adapter_damage(folder)
    if problem:
        return problem
    for name in [n for n in _TENSOR_FILES if (folder / n).is_file()] + [p.name for p in folder.glob("rng_state_*.pth")]:
        problem = _tensor_file_problem(folder / name)
        if problem:
            return f"its {name} {problem}"
    return None


def adapter_damage(folder: Path) -> str | None:
    """Why the adapter weights saved in ``folder`` (a checkpoint or ``adapter/``) do not read back, or None."""
    adapter = Path(folder) / "adapter_model.safetensors"
    if not adapter.is_file():
        return "it has no adapter_model.safetensors"
    try:
        from safetensors.torch import load_file

        load_file(str(adapter), device="cpu")
    except Exception as exc:  # SafetensorError is not exported under a stable name
        return f"its adapter weights are corrupt or truncated ({_first_line(exc)})"
    return None


def _tensor_file_problem(path: Path) -> str | None:
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():  # the Trainer's own allowlist (numpy's RNG state) for what it loads
            torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text would suggest weights_only=False: never repeated
        if "global" in str(exc).lower():
            return "is not a plain tensor file (loading it would run pickled code, which kbit never does)"
        return "cannot be read as plain tensors (damaged)"
    except Exception as exc:  # a damaged file raises anything: EOFError, RuntimeError, zipfile's errors
        return f"cannot be read ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The Trainer's state saved with ``checkpoint`` (global step, max steps, log history).

    Raises ValueError when the file is missing, not JSON, or lacks a whole ``global_step``,
    ``max_steps`` or a ``log_history`` list of objects.
    """
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"cannot be read: {type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise ValueError(f"expected an object, got {type(state).__name__}")
    for key in ("global_step", "max_steps"):
        if isinstance(state.get(key), bool) or not isinstance(state.get(key), int) or state[key] < 0:
            raise ValueError(f"'{key}' must be a whole number, got {state.get(key)!r:.40}")
    history = state.get("log_history", [])
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ValueError("'log_history' must be a list of objects")
    for entry in history:  # the losses kbit records (fit._losses)
        if ("loss" in entry or "eval_loss" in entry) and (isinstance(entry.get("step"), bool) or not isinstance(entry.get("step"), int)):
            raise ValueError("a 'log_history' entry with a loss has no whole 'step'")
    return state


def finished_training(checkpoint: Path) -> bool:
    """True when ``checkpoint`` holds the final step: resuming from it must not train again.

    (The Trainer would: resumed from its last step in the middle of an epoch, it runs one more.)
    """
    state = trainer_state(checkpoint)
    return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])
