"""Distillation from a finished run (``--teacher RUN``): the teacher's answer-token distributions are a
second target of the training loss.

Each training step adds ``KL(teacher ‖ student)``, summed over the labelled positions and divided like
the cross-entropy (so at weight 1 both terms count alike), to the loss. The teacher is the ``merged/``
model of a finished kbit run, run forward without gradient in float32 (its logits are what the student
is pulled toward, so they are not rounded to a lower precision). LLM-QAT and BitDistiller distil a
quantized student from its full-precision model the same way; here the full-precision model is a run
the user already trained. The held-out loss kbit measures stays the plain cross-entropy.

The teacher must have trained on the same examples and split as the run it teaches (equal data
fingerprints): a teacher that learned this run's held-out items would leak them into the student.
trl's ``GKDTrainer`` (off-policy with ``lmbda=0``, forward KL with ``beta=0``) trains on the divergence
alone and is a trainer of its own, which would replace kbit's (the labelled-positions loss, the adapter
dtype, the stop at a non-finite loss); so kbit adds the term to its own loss, beside the cross-entropy,
on the labelled positions ``kbit.core.train.loss`` already projects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kbit.core.data import TaskData
from kbit.core.errors import ConfigError

MERGED = "merged"


def needs_own_loss(reason: str) -> str:
    """The refusal of ``--teacher`` where kbit's own loss does not apply, with why: "it trains in 2 processes" …"""
    return f"--teacher needs kbit's own loss, which this run cannot use: {reason}; train without --teacher"


NEEDS_OWN_LOSS = needs_own_loss("several processes, or a model whose head scales or soft-caps its logits")


def teacher_model_dir(path: str, data: TaskData, vocab_size: int) -> Path:
    """The merged model of the run at ``path``, checked as a teacher for a run on ``data`` whose model
    has ``vocab_size`` output tokens; ConfigError naming the problem and the fix otherwise."""
    from kbit.core.model.check import load_config
    from kbit.core.model.sources import check_remote_code
    from kbit.core.runs.record import read_record

    run = Path(path).expanduser()
    record = read_record(run) if run.is_dir() else None
    if record is None or record.kind != "run":
        raise ConfigError(f"--teacher {path} is not a kbit run; give the folder of a finished run trained on the same "
                          "dataset and split")
    if record.status != "finished":
        raise ConfigError(f"--teacher {path} is a run that has not finished (status {record.status}); finish it "
                          "(kbit train --resume) or give another run")
    merged = run / MERGED
    if not (merged / "config.json").is_file():
        raise ConfigError(f"--teacher {path} has no merged model ({merged} is missing or holds no config.json); "
                          "give a run whose method merges")
    try:
        check_remote_code(merged, False)
    except ConfigError:  # a built-in class would stand in for its code, and teach another model than the run's
        raise ConfigError(f"--teacher {path}'s merged model ships its own code (auto_map); kbit loads a teacher with "
                          "transformers' own classes only: give a run of a model without it") from None
    recorded = record.dataset.fingerprint if record.dataset is not None else None
    if recorded != (actual := data.fingerprint()):
        raise ConfigError(f"--teacher {path} trained on other data or another split (fingerprint {recorded}, this run "
                          f"{actual}): its answers could teach this run's held-out items; train the teacher with the same "
                          "--dataset, --held-out, --max-examples and --seed")
    theirs = load_config(str(merged), False).get_text_config().vocab_size
    if theirs != vocab_size:
        raise ConfigError(f"--teacher {path} predicts {theirs} tokens and this model {vocab_size}: a teacher must share "
                          "the model's tokenizer; give a run of the same model family")
    return merged.resolve()


class Teacher:
    """The teacher model, loaded on first use on the student's device, and its log-probabilities."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._model: Any = None

    def log_probs(self, forward: dict[str, Any], scored: Any) -> Any:
        """Log-probabilities of the next token at the ``scored`` positions (the student's labelled
        positions, one row shorter than ``forward``'s inputs), float32, without gradient."""
        import torch

        from kbit.core.train.loss import head_logits

        model = self._load(forward["input_ids"].device)
        with torch.no_grad(), torch.autocast(forward["input_ids"].device.type, enabled=False):
            hidden = model.base_model(**forward, use_cache=False).last_hidden_state[:, :-1]
            return torch.log_softmax(head_logits(model, hidden, scored), dim=-1)

    def _load(self, device: Any) -> Any:
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            self._model = AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32)
            self._model.to(device).eval().requires_grad_(False)
        return self._model


def distillation_sum(teacher_log_probs: Any, student_logits: Any) -> Any:
    """``KL(teacher ‖ student)`` summed over the rows (one per labelled position)."""
    import torch

    student = torch.log_softmax(student_logits, dim=-1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student)).sum()
