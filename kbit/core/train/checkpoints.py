"""Training checkpoints a resume can trust.

The Trainer writes ``checkpoint-N/`` file by file (adapter, optimizer, scheduler, RNG state,
``trainer_state.json``), so a kill in the middle leaves a folder that looks like a checkpoint but is
not one. ``SealCheckpoints`` writes a seal file into each checkpoint once the Trainer has finished it;
a resume starts from the newest sealed checkpoint and deletes the unsealed ones after it.
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

SEAL = "kbit-complete"
PREFIX = "checkpoint-"
_LEGACY_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "adapter_config.json")


class SealCheckpoints(TrainerCallback):
    """After the Trainer has written (and rotated) a checkpoint, mark it complete."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / SEAL).write_text(json.dumps({"global_step": state.global_step}), encoding="utf-8")


def _step(folder: Path) -> int:
    match = re.fullmatch(rf"{PREFIX}(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def _checkpoints(root: Path) -> list[Path]:
    found = [p for p in Path(root).glob(f"{PREFIX}*") if p.is_dir() and _step(p) >= 0]
    return sorted(found, key=_step, reverse=True)


def is_complete(folder: Path, sealed_run: bool) -> bool:
    """A sealed checkpoint, or (for a run that never sealed one) one with every file the Trainer writes."""
    if (folder / SEAL).is_file():
        return True
    return not sealed_run and all((folder / name).is_file() for name in _LEGACY_FILES)


def last_complete(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    checkpoints = _checkpoints(root)
    sealed_run = any((c / SEAL).is_file() for c in checkpoints)
    return next((c for c in checkpoints if is_complete(c, sealed_run)), None)


def remove_incomplete(root: Path) -> list[str]:
    """Delete the checkpoints newer than the last complete one (a kill's half-written leftovers).

    Call only while holding the run's lock. Returns the names removed.
    """
    keep = last_complete(root)
    newer = [c for c in _checkpoints(root) if keep is None or _step(c) > _step(keep)]
    for folder in newer:
        shutil.rmtree(folder)
    return [c.name for c in newer]


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The Trainer's state saved with ``checkpoint`` (global step, max steps, log history)."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))


def finished_training(checkpoint: Path) -> bool:
    """True when ``checkpoint`` holds the final step: resuming from it must not train again.

    (The Trainer would: resumed from its last step in the middle of an epoch, it runs one more.)
    """
    state = trainer_state(checkpoint)
    return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])
