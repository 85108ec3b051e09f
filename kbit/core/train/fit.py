"""The training stage: supervised fine-tuning of the attached adapter with trl's SFTTrainer.

A resumed run continues from its last complete checkpoint; when that checkpoint already holds the
final step, the adapter is read from it instead of training again (see ``checkpoints``).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from kbit.core.model.compat import checkpointing_arguments, checkpointing_enabled
from kbit.core.system.device import Decision, torch_dtype, trainer_device_args
from kbit.core.measure.budget import cut_for_tokens
from kbit.core.measure.generation import render_prompt
from kbit.core.train import checkpoints
from kbit.core.train.plan import RunPlan, is_main_process, process_count

CHECKPOINTS = "checkpoints"
log = logging.getLogger("kbit")
FEW_USED_FLOOR = 10_000  # below this many rows, preparing them all takes seconds: no hint


@attrs.frozen
class Trained:
    """What the training stage hands on: the adapter model and how it got there."""

    model: Any
    history: list[dict[str, float]]
    steps: int
    world_size: int
    resumed_from: str | None
    digests: list[str]
    is_main: bool
    padding_free: dict[str, Any] | None = None  # the decision, for kbit.json
    tokens: dict[str, int] | None = None  # real tokens and tokens in the micro-batches (padding included)
    held_out_loss_items: int = 0  # held-out items the loss during training is measured on
    speed: dict[str, Any] = attrs.field(factory=dict)  # tokens/s, achieved GFLOP/s and MFU of the steps


def sft_dataset(tokenizer: Any, examples, max_length: int) -> Any:
    """trl's prompt-completion rows of ``examples``. A completion is cut to the characters ``max_length`` tokens
    can hold: training cuts each example at ``max_length`` tokens anyway, and trl would tokenize a completion
    of megabytes whole first (minutes and gigabytes for one row)."""
    from datasets import Dataset

    if getattr(tokenizer, "chat_template", None):
        rows = [{"prompt": e.prompt_messages(),
                 "completion": [{"role": "assistant", "content": cut_for_tokens(e.completion, max_length)}]} for e in examples]
    else:
        rows = [{"prompt": render_prompt(tokenizer, e),
                 "completion": cut_for_tokens(e.completion + (tokenizer.eos_token or ""), max_length)} for e in examples]
    return Dataset.from_list(rows)


def trained_text(row: Mapping[str, Any], tokenizer: Any) -> str:
    """A row of trl's tokenized dataset as text, each run of tokens the loss is taken on between ⟦ and ⟧
    (``labels`` other than -100, or trl's older ``completion_mask``)."""
    ids = list(row["input_ids"])
    if "labels" in row:
        trained = [label != -100 for label in row["labels"]]
    else:
        trained = [bool(m) for m in row.get("completion_mask") or row.get("assistant_masks") or [1] * len(ids)]
    spans = itertools.groupby(zip(ids, trained), key=lambda pair: pair[1])
    return "".join(f"⟦{text}⟧" if is_trained else text
                   for is_trained, span in spans for text in [tokenizer.decode([token for token, _ in span])])


def padding_free_decision(plan: RunPlan, model: Any, dataset: Any) -> Decision:
    """Whether ``plan``'s micro-batches are padding-free for ``model`` (see ``kbit.core.train.padding``)."""
    from kbit.core.train.padding import (attention_separates_packed_examples, decide_padding_free, example_lengths,
                                         expected_padding)

    config = plan.config
    if config.packing and config.padding_free == "true" and is_main_process():
        log.warning("--padding-free true adds nothing to --packing, whose bins already hold no padding; "
                    "batches are packed")
    lengths = example_lengths(plan.tokenizer, dataset)
    return decide_padding_free(config.padding_free, packing=config.packing, longest=max(lengths, default=0),
                               max_length=config.max_length,
                               padding=expected_padding(lengths, plan.batch_size, seed=config.seed),
                               attention=attention_separates_packed_examples(model))


def warmup_steps(ratio: float, max_steps: int) -> int:
    """The warm-up steps for ``ratio`` of ``max_steps``, at most all but the last: a warm-up step's rate rises from 0,
    so a run all warm-up (1 step at any ratio) would end where it began."""
    steps = int(math.ceil(ratio * max(max_steps, 1)))
    return min(steps, max_steps - 1) if max_steps > 0 else steps


def build_trainer(plan: RunPlan, model: Any) -> Any:
    from trl import SFTConfig

    from transformers import PrinterCallback

    from kbit.core.system.console import verbosity
    from kbit.core.train.callbacks import EvaluateAtEnd, LogProgress, StopOnNonFinite
    from kbit.core.train.teacher import Teacher
    from kbit.core.train.trainer import KbitSFTTrainer

    config, compute = plan.config, plan.spec.training.compute_dtype
    # kbit's console (not verbose): logged steps as kbit lines instead of the bar and printed dicts
    own_progress = verbosity() in ("normal", "quiet")
    held_out = held_out_loss_items(plan)
    eval_strategy, eval_steps = training_evaluation(config) if held_out else ("no", None)
    checkpointing = checkpointing_enabled(model)
    if is_main_process():  # tens of seconds for tens of thousands of rows: say what the wait is
        log.info("preparing %d training examples (chat template, tokenization)", len(plan.examples))
        used = config.max_steps * plan.batch_size * config.grad_accum * process_count() if config.max_steps > 0 else None
        if used is not None and len(plan.examples) >= max(10 * used, FEW_USED_FLOOR):
            log.info("%d steps use %d of them; --max-examples N prepares only the first N rows of the file", config.max_steps,
                     used)
    dataset = sft_dataset(plan.tokenizer, plan.examples, config.max_length)
    padding_free = padding_free_decision(plan, model, dataset)
    args = SFTConfig(
        output_dir=str(plan.run_dir / CHECKPOINTS),
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=plan.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.scheduler,
        **({"optim": config.optim} if config.optim else {}),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        warmup_steps=warmup_steps(config.warmup_ratio, config.max_steps),
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        per_device_eval_batch_size=plan.batch_size,
        logging_nan_inf_filter=False,  # the default hides NaN losses, which must stop the run
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        # trl cuts no example in a padding-free batch; the decision checked that every one fits.
        max_length=None if padding_free.value else config.max_length,
        packing=config.packing,
        padding_free=padding_free.value,
        report_to=[] if config.report_to == "none" else [config.report_to],
        **trainer_device_args(plan.device, compute),
        **checkpointing_arguments(SFTConfig, checkpointing),
        dataloader_num_workers=0,
        disable_tqdm=own_progress or not is_main_process(),
        ddp_find_unused_parameters=False,
    )
    trainer = KbitSFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=sft_dataset(plan.tokenizer, held_out, config.max_length) if eval_strategy != "no" else None,
        processing_class=plan.tokenizer,
        callbacks=[StopOnNonFinite(model), checkpoints.SealCheckpoints(),
                   *([EvaluateAtEnd()] if eval_strategy != "no" else []), *_round_after(plan, model)],
        adapter_dtype=torch_dtype(plan.spec.training.adapter_dtype),
        teacher=Teacher(plan.teacher) if plan.teacher is not None else None,
    )
    trainer.padding_free_decision = {"value": padding_free.value, "requested": config.padding_free,
                                     "reason": padding_free.reason}
    if is_main_process() and len(trainer.train_dataset):  # in the run log (and with -v): what the loss is taken on
        log.debug("the first training row as the model reads it; the loss is taken on the tokens between ⟦ and ⟧:\n%s",
                  trained_text(trainer.train_dataset[0], plan.tokenizer))
    if own_progress and is_main_process():
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogProgress())
    return trainer


def _round_after(plan: RunPlan, model: Any) -> list[Any]:
    """The callback that starts the rounding after the float share of the steps, where the spec asks for one."""
    from kbit.core.train.callbacks import RoundAfter

    adapter = plan.spec.adapter
    if adapter is None or adapter.fake_quant is None or not adapter.fake_quant_after:
        return []
    return [RoundAfter(model, adapter.fake_quant_after)]


EVALS_PER_RUN = 4
# The held-out loss during training is a curve to watch for overfitting, not a result: it is measured on
# the first EVAL_LOSS_ITEMS of the held-out items that are scored after training. On the default run all
# 100 items took 12 s a measurement, 49 s of a 400 s run; 32 items keep the curve's shape for a third.
EVAL_LOSS_ITEMS = 32


def held_out_loss_items(plan: RunPlan) -> list[Any]:
    """The held-out examples the loss during training is measured on (none when scoring is off)."""
    return list(plan.data.held_out[: min(plan.config.eval_limit, EVAL_LOSS_ITEMS)])


def training_evaluation(config: Any) -> tuple[str, int | None]:
    """When the held-out loss is measured during training: the Trainer's ``eval_strategy`` and
    ``eval_steps`` (see ``TrainConfig.eval_steps``); the last step is always measured (``EvaluateAtEnd``).

    By default about ``EVALS_PER_RUN`` times a run, on logging steps so that each held-out loss sits
    beside a training loss; a run of whole epochs (no --max-steps), at the end of each epoch.
    """
    if config.eval_limit == 0 or config.eval_steps == 0:
        return "no", None
    if config.eval_steps is not None:
        return "steps", config.eval_steps
    if config.max_steps <= 0:
        return "epoch", None
    rounds = max(1, math.ceil(config.max_steps / config.logging_steps / EVALS_PER_RUN))
    return "steps", rounds * config.logging_steps


def train_adapter(plan: RunPlan, model: Any, on_log: Callable[[list[dict[str, float]], int], None] | None = None) -> Trained:
    """Train the adapter of ``model`` (resuming from the last complete checkpoint on ``--resume``); ``on_log`` gets the
    losses so far and the step at every logged step (what an interrupted run records)."""
    trainer = build_trainer(plan, model)
    if on_log is not None:
        from kbit.core.train.callbacks import OnLog

        trainer.add_callback(OnLog(lambda state: on_log(_losses(state.log_history), state.global_step)))
    checkpoint = checkpoints.last_complete(plan.run_dir / CHECKPOINTS) if plan.resume else None
    if plan.resume and checkpoint is None and is_main_process():
        log.warning("no checkpoint to resume from in %s (none was saved before the run stopped, or they were "
                    "deleted or damaged): training starts again from step 1", plan.run_dir / CHECKPOINTS)
    if checkpoint is not None and is_main_process():
        log.info("resuming from %s", checkpoint.relative_to(plan.run_dir))
    if checkpoint is not None and checkpoints.finished_training(checkpoint):
        load_adapter_weights(trainer.model, checkpoint, plan.spec)
        state = checkpoints.trainer_state(checkpoint)
        history, steps = _losses(state.get("log_history", [])), int(state["global_step"])
    else:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        history, steps = _losses(trainer.state.log_history), trainer.state.global_step
    return Trained(trainer.model, history, steps, trainer.args.world_size, checkpoint.name if checkpoint else None,
                   adapter_digests(trainer.model), trainer.is_world_process_zero(),
                   padding_free=trainer.padding_free_decision, tokens=trainer.token_counts(),
                   held_out_loss_items=len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
                   speed=step_speed(trainer, plan.spec.training.compute_dtype))


def step_speed(trainer: Any, compute_dtype: str) -> dict[str, Any]:
    """How fast this process's training steps ran (``kbit.core.measure.throughput``), against this
    device's matmul peak in the compute dtype; empty when no step ran here (a finished run resumed)."""
    from kbit.core.measure.throughput import model_shape, speed_figures

    work = trainer.step_work()
    if not work.tokens or not trainer.is_world_process_zero():
        return {}
    device, dtype = trainer.args.device, torch_dtype(compute_dtype)
    try:
        from kbit.core.system.matmul_peak import matmul_peak_gflops

        peak = matmul_peak_gflops(str(device), dtype)
    except (RuntimeError, OSError) as exc:  # a device that cannot run the probe: no MFU, the rest stands
        log.warning("could not measure the matmul peak of %s in %s (%s): no MFU recorded", device, compute_dtype, exc)
        peak = None
    import torch

    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    figures = speed_figures(model_shape(trainer.model), work, trainer.step_timer.seconds, peak)
    return {**figures, "peak": f"{compute_dtype} matmul on {device.type}{threads}"} if figures else {}


def load_adapter_weights(model: Any, folder: Path, spec: Any) -> None:
    """Put the adapter saved in ``folder`` (a checkpoint or ``adapter/``) into ``model``'s adapter, in the run's dtype."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    from kbit.core.train.trainer import set_adapter_dtype

    result = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise RuntimeError(f"adapter in {folder} does not fit the model (unexpected keys {unexpected[:3]})")
    set_adapter_dtype(model, torch_dtype(spec.training.adapter_dtype))


def _losses(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Training loss per logged step, with the held-out loss (``eval_loss``) at the steps it was measured.

    Evaluations fall on logged steps (``training_eval_steps``); one that does not gets an entry of its own.
    """
    by_step: dict[int, dict[str, float]] = {}
    for entry in log_history:
        for key in ("loss", "eval_loss"):
            if key in entry:
                by_step.setdefault(entry["step"], {"step": entry["step"]})[key] = entry[key]
    return [by_step[step] for step in sorted(by_step)]


def adapter_digests(model: Any) -> list[str]:
    """sha256 of the trained adapter weights on every rank (gathered to all ranks under DDP)."""
    import hashlib

    import torch.distributed as dist
    from peft import get_peft_model_state_dict

    digest = hashlib.sha256()
    for key, tensor in sorted(get_peft_model_state_dict(model).items()):
        digest.update(key.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    mine = digest.hexdigest()[:16]
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered
