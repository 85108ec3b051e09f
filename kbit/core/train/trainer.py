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

from kbit.core.train.callbacks import TimeSteps


def _restore_indexed_cpu(storage: Any, location: str) -> Any:
    return storage if location.startswith("cpu:") else None


# transformers loads a multi-process run's optimizer state onto ``args.device``, which is ``cpu:0`` for processes on
# CPUs, and torch.load restores only the location "cpu": resuming a torchrun run on CPUs failed in every process. A
# storage for "cpu:N" is a CPU storage; the tagger tags nothing, so saving is unchanged.
torch.serialization.register_package(30, lambda _: None, _restore_indexed_cpu)


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
    which scores only labelled positions (``kbit.core.train.loss``), adds a ``teacher``'s KL term to
    each training step where one is given (``kbit.core.train.teacher``) and stops at the first non-finite loss.

    The reload hook runs before the optimizer is built and before DDP wraps the model, so the
    optimizer state loads straight into that dtype (exactly: it was saved from it).
    """

    def __init__(self, *args: Any, adapter_dtype: torch.dtype, teacher: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adapter_dtype = adapter_dtype
        set_adapter_dtype(self.model, adapter_dtype)
        self.scores_labelled_positions_only = self._plain_token_loss()
        if teacher is not None and not self.scores_labelled_positions_only:
            from kbit.core.errors import ConfigError
            from kbit.core.train.teacher import NEEDS_OWN_LOSS

            raise ConfigError(NEEDS_OWN_LOSS)
        self.teacher = teacher
        self._work: list[Any] = [0, 0, 0]  # real tokens, head positions, attention pairs: summed on the device
        self._tokens_in_batches = 0
        self.step_timer = TimeSteps()
        self.add_callback(self.step_timer)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The held-out loss, leaving torch's CPU generator as it found it: each DataLoader pass draws its
        base seed from that generator, which shifted every later dropout mask, so the training itself
        depended on how often it was measured (``--eval-steps``)."""
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(*args, **kwargs)

    def token_counts(self) -> dict[str, int]:
        """Tokens this process trained on so far: the examples' own and the micro-batches' (padding included)."""
        return {"tokens_real": int(self._work[0]), "tokens_in_batches": self._tokens_in_batches}

    def step_work(self) -> Any:
        """What this process's training steps processed so far (``kbit.core.measure.throughput.StepWork``)."""
        from kbit.core.measure.throughput import StepWork
        from kbit.core.model.compat import checkpointing_enabled

        tokens, head, pairs = (int(value) for value in self._work)
        return StepWork(tokens=tokens, head_positions=head, attention_pairs=pairs,
                        checkpointing=checkpointing_enabled(self.model))

    def _plain_token_loss(self) -> bool:
        """True when trl's loss here is the plain mean token NLL that ``labelled_loss`` computes.

        Anything else trl adds to it (another loss type, label smoothing, a custom loss function, a
        MoE router loss, vision inputs, a scaled or soft-capped head) keeps trl's own path, and so does
        a run on several processes or GPUs (``labelled_loss`` calls the backbone past DDP's wrapper).
        """
        from kbit.core.train.loss import plain_head

        return (
            self.accelerator.num_processes == 1
            and self.args.n_gpu <= 1
            and plain_head(self.model)
            and getattr(self.args, "loss_type", "nll") == "nll"
            and self.compute_loss_func is None
            and self.label_smoother is None
            and getattr(self, "aux_loss_enabled", True) is False
            and getattr(self, "_is_vision_dataset", True) is False
        )

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        """trl's loss, computed on the labelled positions only, and trl's metrics (entropy, token
        accuracy, tokens seen) from them; trl's own path where that is not the same loss."""
        if return_outputs or not self.scores_labelled_positions_only:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        from kbit.core.train.loss import labelled_loss

        scored = labelled_loss(model, inputs, num_items_in_batch, teacher=self.teacher)
        loss = scored.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as trl and the Trainer do
        self._log_token_metrics(inputs, scored)
        return loss

    def _log_token_metrics(self, inputs: Any, scored: Any) -> None:
        """What trl's ``compute_loss`` logs besides the loss, so the logs read the same either way."""
        metrics = getattr(self, "_metrics", None)
        if metrics is None:
            return
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        valid = gather(scored.labelled).sum()
        entropy, correct = gather(scored.entropy_sum).sum(), gather(scored.correct).sum()
        metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                seen = inputs["attention_mask"].sum()
            else:  # padding-free: one row without padding
                seen = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += gather(seen).sum().item() // getattr(self, "_tp_size", 1)
        metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        """The Trainer's step, refusing a NaN/infinite loss before the optimizer applies its gradients."""
        from kbit.core.train.callbacks import NonFiniteLoss

        from kbit.core.measure.throughput import batch_work

        self._tokens_in_batches += inputs["input_ids"].numel()
        # Padding-free rows hold no padding (trl pads them only to pad_to_multiple_of, which kbit leaves unset).
        work = batch_work(inputs, labelled_head=self.scores_labelled_positions_only)
        self._work = [total + part for total, part in zip(self._work, work)]
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
