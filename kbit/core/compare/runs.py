"""Whether a method's run folder can be reused, must be resumed, or has to be trained.

A run is reusable for a comparison when its ``kbit.json`` records the same training settings
(method, method options, model, dataset, step budget, seed, batch and the rest of ``TrainConfig``
that changes the trained adapter), the same dataset fingerprint and the same base model revision.
A matching run that did not finish (interrupted, killed or failed) is resumed from its last
checkpoint. A folder that holds anything else is never silently replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from kbit.core.errors import ConfigError
from kbit.core.runs.record import FILENAME, RunRecord, read_record
from kbit.core.runs.folder import LOCK_NAME
from kbit.core.runs.outputs import kbit_kind
from kbit.core.train.config import FIELDS, TrainConfig, resume_config

TRAIN, REUSE, RESUME = "train", "reuse", "resume"

# Settings that do not change what a run trains: where it is written, how it is named, how often it
# logs or checkpoints, and the scoring at its end (kbit compare scores every variant itself).
NOT_COMPARED = frozenset({"output", "overwrite", "trust_remote_code", "name", "eval_limit", "max_new_tokens",
                          "logging_steps", "save_steps", "report_to", "eval_steps"})
COMPARED = tuple(f for f in FIELDS if f not in NOT_COMPARED)


@attrs.frozen
class RunDecision:
    """What to do with a method's run folder: ``train`` (new or replaced), ``reuse`` or ``resume``."""

    action: str = attrs.field(validator=attrs.validators.in_((TRAIN, REUSE, RESUME)))
    replaces: str = ""  # for a retrain under --overwrite: why the earlier content did not fit


def decide(run_dir: Path, wanted: TrainConfig, *, data_fingerprint: str, model_revision: str,
           overwrite: bool) -> RunDecision:
    """Decide for ``run_dir``; raises ``ConfigError`` when it holds something else and not ``overwrite``."""
    run_dir = Path(run_dir)
    if not os.path.lexists(run_dir) or (run_dir.is_dir() and all(p.name == LOCK_NAME for p in run_dir.iterdir())):
        return RunDecision(TRAIN)
    problem = mismatch(run_dir, wanted, data_fingerprint=data_fingerprint, model_revision=model_revision)
    if problem and run_dir.is_symlink():  # --overwrite would not help: kbit never replaces through a link
        raise ConfigError(f"{run_dir} {problem}; replace the link by a real folder or choose another --out")
    if problem:
        if overwrite:
            return RunDecision(TRAIN, replaces=problem)
        raise ConfigError(f"{run_dir} {problem}; pass --overwrite to retrain it there or choose another --out")
    record = read_record(run_dir)
    return RunDecision(REUSE if record is not None and record.status == "finished" else RESUME)


def mismatch(run_dir: Path, wanted: TrainConfig, *, data_fingerprint: str, model_revision: str) -> str:
    """Why the run in ``run_dir`` is not ``wanted``'s run ("" when it is), as the end of a sentence."""
    if run_dir.is_symlink():
        return "is a symlink; the comparison keeps its runs in real folders"
    if kbit_kind(run_dir) != "run" and not (run_dir / FILENAME).is_file():  # a damaged record is said below
        return "holds something other than a kbit run"
    try:
        record = read_record(run_dir) or RunRecord()
        recorded = resume_config(run_dir, {})
    except ConfigError as exc:
        return f"holds a run whose kbit.json cannot be read back ({exc})"
    if wanted.lr is None:  # the learning rate the run would train at: the method's default, else kbit's
        wanted = _with_default_lr(wanted)
    changed = [f"{f} {getattr(recorded, f)!r}, not {getattr(wanted, f)!r}" for f in COMPARED
               if getattr(recorded, f) != getattr(wanted, f)]
    if changed:
        return f"holds a run with other settings ({'; '.join(changed)})"
    fingerprint = record.dataset.fingerprint
    if fingerprint != data_fingerprint:
        return f"holds a run trained on other data (dataset fingerprint {fingerprint}, now {data_fingerprint})"
    revision = record.base_model.revision
    if revision != model_revision:
        return f"holds a run of another version of the model (revision {revision}, now {model_revision})"
    return ""


def _with_default_lr(wanted: TrainConfig) -> TrainConfig:
    from kbit.core.system.device import detect_device
    from kbit.core.methods.registry import get_method
    from kbit.core.train.plan import with_learning_rate

    spec = get_method(wanted.method).resolve_spec(wanted.options, detect_device())
    return with_learning_rate(wanted, spec)[0]
