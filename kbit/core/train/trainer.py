"""kbit's trainer: trl's SFTTrainer with the adapter kept in the spec's ``adapter_dtype``.

trl casts the adapter of a bitsandbytes base to bf16 whatever the compute dtype, and on resume the
Trainer reloads the adapter through PEFT, which upcasts it to float32. Either way the run would train
in another dtype than its spec says, and a resumed run in another dtype than the run it continues.
Imported lazily: it imports trl (and torch).
"""

from __future__ import annotations

from typing import Any

import torch
from trl import SFTTrainer


def set_adapter_dtype(model: Any, dtype: torch.dtype) -> None:
    """Cast the trainable parameters of ``model`` to ``dtype``.

    A DoRA magnitude vector stays float32: its updates are often below bf16's resolution, so in bf16
    it would silently stop training. Only ``.data`` changes, so parameter identity is kept.
    """
    for name, parameter in model.named_parameters():
        wanted = torch.float32 if "lora_magnitude_vector" in name else dtype
        if parameter.requires_grad and parameter.dtype != wanted:
            parameter.data = parameter.data.to(wanted)


class KbitSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose adapter is in ``adapter_dtype`` from the start and after a checkpoint reload,
    and which stops at the first non-finite loss.

    The reload hook runs before the optimizer is built and before DDP wraps the model, so the
    optimizer state loads straight into that dtype (exactly: it was saved from it).
    """

    def __init__(self, *args: Any, adapter_dtype: torch.dtype, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter_dtype = adapter_dtype
        set_adapter_dtype(self.model, adapter_dtype)

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        """The Trainer's step, refusing a NaN/infinite loss before the optimizer applies its gradients."""
        from kbit.core.train.callbacks import NonFiniteLoss

        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            raise NonFiniteLoss(
                f"training loss became {float(loss)} at step {self.state.global_step + 1}; lower --lr or check the "
                "data (the last good checkpoint is kept)"
            )
        return loss

    # A private Trainer method, and the only point between the reload and the optimizer's creation;
    # if transformers renames it, the bf16 case of tests/reliability/test_kill_and_resume.py fails.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        set_adapter_dtype(self.model, self.adapter_dtype)
