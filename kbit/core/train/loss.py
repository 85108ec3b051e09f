"""The SFT loss computed only where there is a label: the LM head projects just the positions that
predict a labelled token.

trl's ``SFTTrainer`` runs the LM head through its own chunked log-probability kernel
(``trl.trainer.utils.add_fused_lm_head``). On CUDA and XPU (Triton) that kernel projects only the
labelled positions; everywhere else it projects every position, in vocabulary chunks, and again in
the backward pass. With a completion-only loss on short answers most positions carry no label, so
on a CPU most of that work is thrown away: SmolLM2's head projects onto a 49k-token vocabulary.

This computes the same loss the way trl's kernel does on a Triton device: the backbone's last
hidden states at the labelled positions only, projected through the head's weight in float32
(trl accumulates its logits in float32 too, whatever the autocast dtype: rounding logits to bf16
biases training), then the summed negative log-likelihood over the same divisor. It is used only
where that is the whole of trl's loss (see ``KbitSFTTrainer``); models whose head scales or
soft-caps its logits keep trl's path, which knows each family's variant.

Imported lazily (imports torch).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

IGNORE = -100  # the label of a position that is not scored (transformers' and trl's convention)

# Config attributes by which a model's head changes its logits beyond ``hidden @ weight.T + bias``
# (the ones trl's fused head reads).
_HEAD_VARIANTS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


@attrs.frozen
class ScoredLoss:
    """The loss of one micro-batch and the per-token statistics trl logs for it."""

    loss: torch.Tensor
    labelled: torch.Tensor  # number of scored tokens
    entropy_sum: torch.Tensor  # summed entropy of the predicted distributions at scored tokens (no grad)
    correct: torch.Tensor  # scored tokens whose label is the model's top-1 prediction


def causal_lm(model: Any) -> Any:
    """The transformers causal LM inside ``model`` (itself, or the one a PEFT model wraps)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plain_head(model: Any) -> bool:
    """Whether the logits of ``model`` are just its output embedding applied to the backbone's hidden
    states (no soft-capping, no logit scale), so that ``labelled_loss`` is the model's own loss."""
    lm = causal_lm(model)
    if not plain_head_config(lm.config):
        return False
    head = lm.get_output_embeddings()
    return isinstance(head, torch.nn.Linear) and lm.base_model is not lm


def plain_head_config(config: Any) -> bool:
    """Whether a model ``config`` names no head variant that changes the logits (soft-capping, a logit scale)."""
    text = config.get_text_config()
    return all(getattr(text, name, None) in (None, 1, 1.0) for name in _HEAD_VARIANTS)


def head_logits(lm: Any, hidden: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """The float32 logits of ``lm``'s output head at the ``scored`` positions of ``hidden`` (autocast off)."""
    head = lm.get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):
        bias = None if head.bias is None else head.bias.float()
        return torch.nn.functional.linear(hidden[scored].to(head.weight.device).float(), head.weight.float(), bias)


def labelled_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, teacher: Any = None) -> ScoredLoss:
    """Sum of the negative log-likelihoods of the labelled tokens of ``inputs``, divided by
    ``num_items_in_batch`` (the Trainer's count over the whole accumulated batch) or, without it, by
    the number of labelled tokens here (at least 1, like trl: a micro-batch without labels gives a
    differentiable zero). Only the labelled positions are projected onto the vocabulary.

    With a ``teacher`` (``kbit.core.train.teacher.Teacher``) the loss of a training step adds the summed
    ``KL(teacher ‖ model)`` at the same positions over the same divisor; the statistics stay the model's own.

    ``model`` must be the unwrapped model (not DDP's wrapper): the backbone is called directly.
    """
    lm = causal_lm(model)
    labels = inputs["labels"]
    forward = {key: value for key, value in inputs.items() if key != "labels"}
    hidden = lm.base_model(**forward, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:].to(hidden.device)
    scored = targets != IGNORE
    logits = head_logits(lm, hidden, scored)  # [labelled, vocab]
    wanted = targets[scored].to(logits.device)
    total = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum")
    count = scored.sum()
    divisor = count if num_items_in_batch is None else num_items_in_batch
    if teacher is not None and model.training:
        from kbit.core.train.teacher import distillation_sum

        total = total + distillation_sum(teacher.log_probs(forward, scored).to(logits.device), logits)
    loss = total / torch.as_tensor(divisor, device=total.device).clamp(min=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy_sum = -(log_probs.exp() * log_probs).sum()
        correct = (logits.argmax(dim=-1) == wanted).sum()
    return ScoredLoss(loss, count, entropy_sum, correct)
