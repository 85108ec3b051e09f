"""Trainer callbacks kbit adds to every run."""

from __future__ import annotations

import math
from typing import Any

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


def set_adapter_dtype(model: Any, dtype: Any, optimizer: Any = None) -> int:
    """Cast the trainable parameters of ``model`` to ``dtype``, and their optimizer state with them.

    A DoRA magnitude vector stays float32: its updates are often below bf16's resolution, so in bf16
    it would silently stop training. Parameters keep their identity (only ``.data`` changes), so an
    optimizer built over them stays valid. Returns how many parameters changed dtype.
    """
    import torch

    state = getattr(optimizer, "state", {}) if optimizer is not None else {}
    changed = 0
    for name, parameter in model.named_parameters():
        wanted = torch.float32 if "lora_magnitude_vector" in name else dtype
        if not parameter.requires_grad or parameter.dtype == wanted:
            continue
        parameter.data = parameter.data.to(wanted)
        for key, value in state.get(parameter, {}).items():
            if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                state[parameter][key] = value.to(wanted)
        changed += 1
    return changed


class AdapterDtypeCallback(TrainerCallback):
    """Put the adapter back in its dtype after a resumed run has reloaded its checkpoint.

    The Trainer reloads the adapter through PEFT, which upcasts it to float32, and then loads the
    optimizer state in that dtype. For a half-precision adapter the resumed run would train in
    another dtype than the run it continues; casting both back (exact, since the values came from
    that dtype) makes the two identical. A no-op when nothing changed dtype.
    """

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is not None:
            set_adapter_dtype(model, self.dtype, optimizer)
