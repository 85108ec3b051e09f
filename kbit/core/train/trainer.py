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
    """``SFTTrainer`` whose adapter is in ``adapter_dtype`` from the start and after a checkpoint reload.

    The reload hook runs before the optimizer is built and before DDP wraps the model, so the
    optimizer state loads straight into that dtype (exactly: it was saved from it).
    """

    def __init__(self, *args: Any, adapter_dtype: torch.dtype, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter_dtype = adapter_dtype
        set_adapter_dtype(self.model, adapter_dtype)

    # A private Trainer method, and the only point between the reload and the optimizer's creation;
    # if transformers renames it, the bf16 case of tests/reliability/test_kill_and_resume.py fails.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        set_adapter_dtype(self.model, self.adapter_dtype)
