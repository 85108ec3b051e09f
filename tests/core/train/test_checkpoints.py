"""Which checkpoint a resume starts from: the newest sealed one whose files all read back safely."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kbit.core.train.checkpoints import SEAL, damage, last_complete, remove_incomplete


def _checkpoint(root: Path, step: int, sealed: bool = True) -> Path:
    """A checkpoint with every file the Trainer writes and reads back, as it writes them."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file({"lora_A.weight": torch.ones(2, 4)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text("{}")
    torch.save({"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}, folder / "optimizer.pt")
    torch.save({"last_epoch": step, "_last_lr": [0.1]}, folder / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps(
        {"global_step": step, "max_steps": 6, "log_history": [{"step": s, "loss": 1.0} for s in range(1, step + 1)]}))
    if sealed:
        (folder / SEAL).write_text(json.dumps({"global_step": step}))
    return folder


class _RunsCode:
    """A pickle that creates a file when loaded: what a tampered optimizer.pt could hold."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return open, (str(self.flag), "w")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated adapter": (lambda c, flag: _truncate(c / "adapter_model.safetensors"), "its adapter weights are corrupt or truncated"),
    "no adapter": (lambda c, flag: (c / "adapter_model.safetensors").unlink(), "it has no adapter_model.safetensors"),
    "state not JSON": (lambda c, flag: (c / "trainer_state.json").write_text('{"global_step": 6, "max_st'),
                       "its trainer_state.json is damaged"),
    "state step text": (lambda c, flag: (c / "trainer_state.json").write_text('{"global_step": "6", "max_steps": 6}'),
                        "'global_step' must be a whole number"),
    "state other step": (lambda c, flag: (c / "trainer_state.json").write_text('{"global_step": 2, "max_steps": 6}'),
                         "records step 2, not 6"),
    "state history": (lambda c, flag: (c / "trainer_state.json").write_text(
        '{"global_step": 6, "max_steps": 6, "log_history": [{"loss": 1.0}]}'), "has no whole 'step'"),
    "state missing": (lambda c, flag: (c / "trainer_state.json").unlink(), "its trainer_state.json is damaged"),
    "pickled optimizer": (lambda c, flag: torch.save({"state": _RunsCode(flag)}, c / "optimizer.pt"),
                          "its optimizer.pt is not a plain tensor file (loading it would run pickled code"),
    "pickled scheduler": (lambda c, flag: torch.save(_RunsCode(flag), c / "scheduler.pt"), "its scheduler.pt is not a plain tensor file"),
    "truncated optimizer": (lambda c, flag: _truncate(c / "optimizer.pt"), "its optimizer.pt cannot be read"),
    "truncated rng": (lambda c, flag: _truncate(c / "rng_state.pth"), "its rng_state.pth cannot be read"),
}


def test_an_intact_checkpoint_is_resumed_from_and_nothing_removed(tmp_path):
    _checkpoint(tmp_path, 4)
    newest = _checkpoint(tmp_path, 6)
    assert damage(newest) is None
    assert remove_incomplete(tmp_path) == [] and last_complete(tmp_path) == newest


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_sealed_checkpoint_falls_back_to_the_previous_one_with_a_line_saying_so(tmp_path, kind):
    spoil, reason = DAMAGE[kind]
    previous = _checkpoint(tmp_path / "checkpoints", 4)
    newest = _checkpoint(tmp_path / "checkpoints", 6)
    flag = tmp_path / "CODE_RAN"
    spoil(newest, flag)
    lines = remove_incomplete(tmp_path / "checkpoints")
    assert len(lines) == 1 and lines[0].startswith("removed checkpoint-6: ") and reason in lines[0], lines
    assert lines[0].endswith("; resuming from checkpoint-4 instead") and "weights_only" not in lines[0]
    assert not newest.exists() and last_complete(tmp_path / "checkpoints") == previous
    assert not flag.exists(), "a pickle in the checkpoint ran code"


def test_with_every_checkpoint_damaged_none_is_resumed_from(tmp_path):
    for step in (4, 6):
        _truncate(_checkpoint(tmp_path, step) / "adapter_model.safetensors")
    lines = remove_incomplete(tmp_path)
    assert [line.split(":")[0] for line in lines] == ["removed checkpoint-6", "removed checkpoint-4"]
    assert all(line.endswith("no earlier checkpoint is usable") for line in lines)
    assert last_complete(tmp_path) is None


def test_a_half_written_checkpoint_is_removed_as_the_kill_left_it(tmp_path):
    _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 6, sealed=False)
    assert remove_incomplete(tmp_path) == ["removed checkpoint-6, left half-written by the interrupted run"]


def test_a_linked_checkpoint_is_neither_resumed_from_nor_deleted(tmp_path):
    previous = _checkpoint(tmp_path / "checkpoints", 4)
    elsewhere = _checkpoint(tmp_path / "elsewhere", 6)
    (tmp_path / "checkpoints" / "checkpoint-6").symlink_to(elsewhere)
    assert remove_incomplete(tmp_path / "checkpoints") == [] and last_complete(tmp_path / "checkpoints") == previous
    assert (elsewhere / "adapter_model.safetensors").is_file()
