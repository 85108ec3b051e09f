"""Trainer callbacks kbit adds to every run."""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

from kbit.core.errors import KbitError

log = logging.getLogger("kbit")


class NonFiniteLoss(KbitError):
    """Training produced a NaN or infinite loss or adapter weight."""


class StopOnNonFinite(TrainerCallback):
    """Stop the run when any trainable (adapter) weight is NaN or infinite after an optimizer step.

    The trainer already refuses a non-finite loss (``KbitSFTTrainer.training_step``); that is not
    enough: with a huge learning rate a step's loss is finite while the update it applies makes the
    weights infinite. The check costs one pass over the adapter (a small fraction of the model).
    The last good checkpoint stays on disk. It also makes the last step's loss always logged.
    """

    def __init__(self, model) -> None:
        self._trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        for name, parameter in self._trainable:
            if not bool(torch.isfinite(parameter).all()):
                raise NonFiniteLoss(
                    f"adapter weight {name} became non-finite at step {state.global_step}; lower --lr or check "
                    "the data (the last good checkpoint is kept)"
                )
        if state.global_step >= state.max_steps > 0:
            control.should_log = True  # the last step's loss is always logged, whatever --logging-steps says


class TimeSteps(TrainerCallback):
    """The seconds spent in training steps: forward, backward and optimizer, from the step's first
    micro-batch to its end; loading the batches, evaluations, logging and saving are not in it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self.seconds += self._now() - self._started
            self._started = None

    @staticmethod
    def _now() -> float:
        import time

        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the step's kernels have run, not only been queued
        return time.perf_counter()


class RoundAfter(TrainerCallback):
    """Train a quantization-aware adapter in float for the first ``share`` of the steps, then through its
    grid (``AdapterSettings.fake_quant_after``). Set before every step, so a resumed run is in the right
    phase; the model computes through the grid again when training ends, as it is merged and scored."""

    def __init__(self, model, share: float):
        self.model, self.share = model, share

    def _switch(self, on: bool) -> None:
        from kbit.core.model.fake_quant import compute_through_grid

        compute_through_grid(self.model, on)

    def on_step_begin(self, args, state, control, **kwargs):
        self._switch(state.global_step >= math.ceil(self.share * state.max_steps))

    def on_train_end(self, args, state, control, **kwargs):
        self._switch(True)


class EvaluateAtEnd(TrainerCallback):
    """Measure the held-out loss at the last step too, whatever the evaluation interval, and once: a run of
    epochs would measure it again at the epoch's end, on the same step."""

    evaluated_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps > 0:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluated_at = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.evaluated_at == state.global_step:
            control.should_evaluate = False


class LogProgress(TrainerCallback):
    """Each logged training step (and evaluation) as one line of the ``kbit`` logger.

    Used instead of the Trainer's progress bar and printed log dicts unless the console is verbose;
    the run log keeps the lines either way.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        log.info("training %d step%s", state.max_steps, "" if state.max_steps == 1 else "s")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        width = len(str(state.max_steps))
        where = f"step {state.global_step:>{width}}/{state.max_steps}"
        if "loss" in logs:
            log.info("%s  loss %.4f  lr %.3g", where, logs["loss"], logs.get("learning_rate", 0.0))
        if "eval_loss" in logs:
            log.info("%s  held-out loss %.4f", where, logs["eval_loss"])


class OnLog(TrainerCallback):
    """Call ``report(state)`` after every logged step (the Trainer's ``log_history`` has grown)."""

    def __init__(self, report) -> None:
        self.report = report

    def on_log(self, args, state, control, **kwargs):
        self.report(state)
