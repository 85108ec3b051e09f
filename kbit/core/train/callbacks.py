"""Trainer callbacks kbit adds to every run."""

from __future__ import annotations

from transformers import TrainerCallback

from kbit.core.errors import KbitError


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
