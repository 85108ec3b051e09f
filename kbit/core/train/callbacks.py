"""Trainer callbacks kbit adds to every run."""

from __future__ import annotations

import math

from transformers import TrainerCallback

from kbit.core.errors import KbitError


class NonFiniteLoss(KbitError):
    """Training produced a NaN or infinite loss."""


class NonFiniteLossCallback(TrainerCallback):
    """Stop the run when a logged loss is NaN or infinite; the last saved checkpoint stays."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLoss(
                f"training loss became {loss} at step {state.global_step}; lower --lr or check the data "
                "(the last good checkpoint is kept)"
            )
