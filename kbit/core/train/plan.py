"""Planning a run: every input checked and every decision made before anything is written.

``plan_run`` resolves the method's spec, loads and splits the data, resolves and checks the model
against the spec (config, weights, adapter targets), sizes rank and batch, names the run and
claims its folder. It raises ``ConfigError`` for anything a user can get wrong, with nothing written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.model.adapters import require_adapter
from kbit.core.system.allocator import malloc_decision
from kbit.core.model.bases import check_loftq, check_mergeable
from kbit.core.data import (Example, TaskData, check_recorded_file, check_trained_on, every_assistant_turn, load_task_data,
                            trained_prompts)
from kbit.core.system.device import Decision, DeviceInfo, detect_device, free_memory_bytes
from kbit.core.errors import ConfigError
from kbit.core.measure.budget import check_fits_context, context_length, cut_for_tokens
from kbit.core.measure.generation import render_prompt
from kbit.core.methods.method import Method
from kbit.core.contract.method_info import MergePolicy, Requirement, describe_missing
from kbit.core.model.check import check_adapter_fits, check_weights_match, load_config, skeleton
from kbit.core.model.sources import ModelSource, check_base_unchanged, load_tokenizer, resolve_model
from kbit.core.runs.naming import run_name
from kbit.core.runs.record import RunRecord, read_record
from kbit.core.methods.registry import default_registry, get_method
from kbit.core.runs.folder import check_writable
from kbit.core.train.sizing import auto_batch_size, auto_rank, concrete_adapter_spec, decide_checkpointing
from kbit.core.contract.spec import QuantizationSpec
from kbit.core.runs.outputs import claim, kbit_kind
from kbit.core.train.config import DEFAULT_LR, TrainConfig
from kbit.core.train.decisions import compute_dtype_decision

log = logging.getLogger("kbit")
RUNS_ROOT = Path("runs")
# --report-to: the experiment trackers transformers reports to, each installed by an extra of kbit.
TRACKERS = {name: Requirement(name, f"pip install 'kbit[{name}]'") for name in ("tensorboard", "wandb", "trackio")}


@attrs.frozen
class RunPlan:
    """Everything decided before any heavy work: resolved spec, data, model, sizes, directory."""

    config: TrainConfig
    method: Method
    spec: QuantizationSpec
    policy: MergePolicy  # merge_policy(spec), asked once: every stage carries out this one
    device: DeviceInfo
    data: TaskData
    examples: tuple[Example, ...]  # what trains: data.train, or with --turns all one example per assistant answer
    source: ModelSource
    tokenizer: Any
    batch_size: int
    sizing: dict[str, str]
    decisions: dict[str, Any]  # what "auto" became and why (kbit.core.train.decisions), for kbit.json
    name: str
    run_dir: Path
    resume: bool
    teacher: Path | None = None  # the merged model of --teacher's run (kbit.core.train.teacher)
    finished: RunRecord | None = None  # --resume of a run that finished: its record, which nothing changes


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def process_count() -> int:
    """How many processes train this run (torchrun's ``WORLD_SIZE``; 1 without it)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


# Optimizers that train whole weight matrices (their own low-rank or fused updates), not an adapter's.
FULL_WEIGHT_OPTIMIZERS = ("galore", "apollo", "lomo", "adalomo")


def _check_optimizer(name: str | None) -> None:
    """Refuse an optimizer transformers does not have, one whose package is missing (transformers' own check,
    run before anything is written rather than at the first step) and one made for full fine-tuning."""
    if name is None:
        return
    import difflib
    import tempfile

    from transformers import Trainer, TrainingArguments
    from transformers.training_args import OptimizerNames

    def problem(candidate: str) -> str:
        if candidate.startswith(FULL_WEIGHT_OPTIMIZERS):
            return "trains whole weight matrices (GaLore, APOLLO, LOMO), not an adapter; choose another, e.g. adamw_torch"
        try:
            Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(output_dir=tempfile.gettempdir(), optim=candidate,
                                                                   use_cpu=True, report_to=[]))
        except (ImportError, ValueError) as exc:
            return str(exc).splitlines()[0]
        return ""

    names = [o.value for o in OptimizerNames]
    if name not in names:  # suggested: the names that would run here, those it begins first
        usable = [n for n in names if not problem(n)]
        close = [n for n in usable if n.startswith(name)][:3] or difflib.get_close_matches(name, usable, n=3)
        raise ConfigError(f"unknown --optim '{name}'; " + (f"did you mean {' or '.join(close)}? " if close else "")
                          + f"here: {', '.join(usable)}")
    if said := problem(name):
        raise ConfigError(f"--optim {name}: {said}")


def plan_run(config: TrainConfig, resume: bool = False) -> RunPlan:
    """Validate every input and decide the run; raises ConfigError before anything is written."""
    method = get_method(config.method)  # first: a method whose backend is missing is refused before torch loads
    clash = default_registry().clash_warning(method.name)
    if clash and is_main_process():
        log.warning("%s", clash)
    _check_tracker(config.report_to)
    _check_optimizer(config.optim)
    device = detect_device()
    method.check_requirements(device)
    spec = method.resolve_spec(config.options, device)
    adapter = require_adapter(spec)
    recorded = read_record(Path(config.output)) if resume and config.output else None
    if recorded is not None:
        check_recorded_file(config.dataset, config.output, held_out=config.held_out)
    data = load_task_data(config.dataset, columns=config.columns, held_out=config.held_out,
                          max_examples=config.max_examples, seed=config.seed)
    if config.held_out_file:
        _check_held_out_file(config.held_out_file, data)
    if recorded is not None:
        check_trained_on(data, recorded.dataset.fingerprint, config.output, held_out=config.held_out)
        _check_processes(recorded.train.world_size, config.output)
    if not data.train:
        raise ConfigError(f"dataset {data.source} has no training examples")
    examples = _training_examples(data, config.turns)
    source = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    finished = recorded if recorded is not None and recorded.status == "finished" else None
    if recorded is not None and finished is None:  # a finished run is not trained further
        check_base_unchanged(recorded.base_model, source.revision, config.output,
                             "its remaining steps would train on other weights: restore the base it started on, or "
                             "train a new run")
    model_config = load_config(source.path, config.trust_remote_code)
    check_fits_context(config.max_new_tokens, model_config)
    teacher = _teacher(config, data, model_config)
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    context = context_length(model_config)
    if context is not None and config.max_length > context:
        raise ConfigError(f"--max-length {config.max_length} is longer than the model's context of {context} tokens; "
                          f"pass at most {context}")
    longest = _check_lengths(tokenizer, examples, config.max_length, context)
    _warn_control_tokens(tokenizer, data)
    sizing: dict[str, str] = {}
    if adapter.r == "auto":
        rank, sizing["r"] = auto_rank(model_config.hidden_size)
        spec = concrete_adapter_spec(spec, rank)
    spec = method.resolve_for_model(spec, model_config)
    decisions = {"compute_dtype": compute_dtype_decision(config.options, device, spec.training.compute_dtype),
                 "malloc": malloc_decision()}
    shape = skeleton(model_config, config.trust_remote_code)
    check_weights_match(Path(source.path), shape)
    check_adapter_fits(shape, spec.adapter)
    model_bytes = weights_bytes(Path(source.path))
    batch_size = config.batch_size
    if batch_size == "auto":
        batch_size, sizing["batch_size"] = auto_batch_size(
            hidden_size=model_config.hidden_size, layers=model_config.num_hidden_layers,
            vocab_size=model_config.vocab_size, max_length=config.max_length,
            model_bytes=model_bytes, memory_bytes=device.memory_bytes,
            device_kind=device.kind,
            checkpointing=spec.training.gradient_checkpointing and _requested(config, "gradient_checkpointing") != "auto",
        )
        if batch_size * process_count() > len(examples):
            batch_size = max(1, len(examples) // process_count())
            sizing["batch_size"] += f"; {batch_size}, as the training set holds {len(examples)} examples"
    _check_accumulation(config.grad_accum, batch_size, len(examples))
    spec, decisions["gradient_checkpointing"] = _checkpointing(
        config, spec, device, model_config, batch_size, model_bytes,
        length=min(config.max_length, longest),
    )
    config, decisions["lr"] = with_learning_rate(config, spec)
    policy = method.merge_policy(spec)
    check_mergeable(method, spec, policy)
    _check_exportable(method.name, policy, model_config)
    check_loftq(method, spec)
    head = (policy.lm_head_dtype or policy.dtype) if policy.action == "merge" else spec.training.compute_dtype
    name = config.name or run_name(source.name, data.name, spec, head)
    run_dir = _claim_run_dir(Path(config.output) if config.output else RUNS_ROOT / name, config, resume,
                             inputs=(config.model, source.path, config.dataset, config.teacher, config.held_out_file))
    check_writable(run_dir, min_free_bytes=3 * model_bytes + (64 << 20))
    return RunPlan(config, method, spec, policy, device, data, examples, source, tokenizer, batch_size, sizing, decisions, name,
                   run_dir, resume, teacher, finished)


def _check_held_out_file(file: str, data: TaskData) -> None:
    """Refuse a held-out file whose every item asks a prompt a training row asks; count those that do."""
    shared = trained_prompts(data.train, data.held_out)
    if shared == len(data.held_out):
        raise ConfigError(f"every item of the held-out file {file} asks a prompt a training row of {data.source} asks: "
                          "its scores would measure recall, not what the model learned; pass a file of items the "
                          "training data does not hold")
    if shared and is_main_process():
        log.warning("%d of %d held-out items of %s ask a prompt a training example of %s asks too: their scores "
                    "measure recall, not what the model learned; keep each prompt in one of the two files",
                    shared, len(data.held_out), file, data.source)


def _training_examples(data: TaskData, turns: str) -> tuple[Example, ...]:
    """The examples that train: ``data.train``, or with ``turns`` "all" each conversation once per assistant answer."""
    if turns == "last":
        return data.train
    examples = tuple(e for example in data.train for e in every_assistant_turn(example))
    if is_main_process():
        log.info("--turns all: %d conversations give %d training examples, one per assistant answer", len(data.train),
                 len(examples))
    return examples


def _check_exportable(method: str, policy: MergePolicy, model_config: Any) -> None:
    """Refuse, before training, a run whose method deploys as a GGUF file kbit cannot write for this model."""
    from kbit.core.export.architectures import architecture_of

    if policy.export or policy.adapter_gguf:
        written = f"a {policy.export} GGUF file" if policy.export else "a llama.cpp LoRA GGUF"
        architecture_of(model_config.to_dict(), f"method '{method}' deploys its run as {written}",
                        remedy="train this model with a method that does not (e.g. qlora) and convert its merged/ "
                               "with llama.cpp's convert_hf_to_gguf.py")


def _teacher(config: TrainConfig, data: TaskData, model_config: Any) -> Path | None:
    """The merged model of ``--teacher``'s run, checked for this run (None without one)."""
    if config.teacher is None:
        return None
    from kbit.core.train.loss import plain_head_config
    from kbit.core.train.teacher import needs_own_loss, teacher_model_dir

    if process_count() > 1:
        raise ConfigError(needs_own_loss(f"it trains in {process_count()} processes"))
    if not plain_head_config(model_config):
        raise ConfigError(needs_own_loss("its model's head scales or soft-caps its logits"))
    return teacher_model_dir(config.teacher, data, model_config.get_text_config().vocab_size)


def with_learning_rate(config: TrainConfig, spec: QuantizationSpec) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with the learning rate it trains at: ``--lr``, else the method's, else ``DEFAULT_LR``."""
    if config.lr is not None:
        return config, {"value": config.lr, "requested": config.lr, "reason": "given (--lr, or the --config file or run repeated)"}
    own = spec.training.learning_rate
    value, reason = (own, f"method {spec.method}'s default") if own is not None else (DEFAULT_LR, "kbit's default")
    return attrs.evolve(config, lr=value), {"value": value, "requested": None, "reason": reason}


def _check_tracker(name: str) -> None:
    tracker = TRACKERS.get(name)
    if tracker is not None and not tracker.is_met():
        raise ConfigError(f"--report-to {name} {describe_missing([tracker])}")


def _claim_run_dir(run_dir: Path, config: TrainConfig, resume: bool, inputs: tuple[str | None, ...]) -> Path:
    """The run folder to write, under the output rule of ``kbit.core.runs.outputs``; ``inputs`` are what the run reads."""
    if resume:
        if read_record(run_dir) is None:
            raise ConfigError(f"cannot resume: {run_dir} is not a kbit run (no {meta.FILENAME})")
        return run_dir.resolve()
    if not is_main_process():
        return run_dir.resolve()  # rank 0 claims; the others only train

    def claimed(overwrite: bool) -> Path:
        return claim(run_dir, is_own=lambda p: kbit_kind(p) == "run", kind="run", overwrite=overwrite,
                     what="run folder", inputs=inputs)

    if kbit_kind(run_dir) == "run" and not config.overwrite:
        claimed(overwrite=True)  # what --overwrite would still refuse is said first, not suggested away
        raise ConfigError(f"output directory {run_dir} holds an earlier run; pass --overwrite to replace it "
                          "or --resume to continue it")
    return claimed(config.overwrite)


def _check_processes(started: int | None, run_dir: str) -> None:
    """Refuse to resume a run in another number of processes than it started in: every later step would average
    another number of examples (a run recorded before kbit kept the count is not checked)."""
    if started is None or started == process_count():
        return
    again = f"torchrun --nproc_per_node {started} -m kbit train --resume {run_dir}" if started > 1 \
        else f"kbit train --resume {run_dir} (one process)"
    now = process_count()
    raise ConfigError(f"cannot resume {run_dir} in {now} process{'es' if now > 1 else ''}: it trained in {started}, and each step's "
                      f"batch would change; resume it with {again}")


def _check_accumulation(grad_accum: int, batch_size: int, examples: int) -> None:
    """Refuse a ``--grad-accum`` above the micro-batches an epoch of the training set fills (each
    process's share under torchrun): the Trainer would silently cut every step short at the epoch's end."""
    world = process_count()
    if batch_size * world > examples:
        each = " per process" if world > 1 else ""
        raise ConfigError(f"a micro-batch of {batch_size}{each} is more than the {examples} training examples, so every step "
                          f"would take fewer than asked; use --batch-size {max(1, examples // world)} or less, or more data")
    per_epoch = -(-examples // (batch_size * world))
    if grad_accum > per_epoch:
        share = " per process" if world > 1 else ""
        raise ConfigError(f"--grad-accum {grad_accum} asks for {grad_accum} micro-batches per optimizer step, but the "
                          f"{examples} training examples fill only {per_epoch} micro-batches of {batch_size}{share} an "
                          f"epoch; use --grad-accum {per_epoch} or less, or a smaller --batch-size")


def weights_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def _requested(config: TrainConfig, option: str) -> str:
    return str(config.options.get(option, "auto")).strip().lower()


def _checkpointing(config: TrainConfig, spec: QuantizationSpec, device: DeviceInfo, model_config: Any, batch_size: int,
                   model_bytes: int, length: int) -> tuple[QuantizationSpec, dict[str, Any]]:
    """``spec`` with gradient checkpointing decided from memory where it was left to auto, and the record of it."""
    requested = _requested(config, "gradient_checkpointing")
    decision, estimates = decide_checkpointing(
        requested if requested in ("true", "false") else "auto", hidden_size=model_config.hidden_size,
        layers=model_config.num_hidden_layers, vocab_size=model_config.vocab_size, length=length,
        batch_size=batch_size, model_bytes=model_bytes, free_bytes=free_memory_bytes(device))
    if requested == "auto":
        spec = attrs.evolve(spec, training=attrs.evolve(spec.training, gradient_checkpointing=decision.value))
    elif spec.training.gradient_checkpointing != decision.value:  # a method that decides it itself
        decision = Decision(spec.training.gradient_checkpointing, "set by the method")
    return spec, {"value": spec.training.gradient_checkpointing, "requested": requested, "reason": decision.reason,
                  **estimates}


def _warn_control_tokens(tokenizer: Any, data: TaskData) -> None:
    """Warn where rows hold one of the tokenizer's special tokens as text (``<|im_end|>``, ``</s>`` …): the
    tokenizer reads it as that control token, not as text, so the row trains the chat format's own markers (a
    completion holding the end-of-turn token cannot be generated whole)."""
    special = sorted({t for t in [*tokenizer.all_special_tokens,
                                  *(t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special)]
                      if len(t) > 1}, key=len, reverse=True)
    if not special:
        return
    rows, found = 0, set()
    for example in (*data.train, *data.held_out):
        text = "".join(part for _, part in example.prompt) + example.completion
        held = {token for token in special if token in text}
        rows, found = rows + bool(held), found | held
    if rows and is_main_process():
        tokens = ", ".join(f"'{t}'" for t in sorted(found))
        log.warning("%d rows hold the tokenizer's control tokens as text (%s): they are read as those tokens, not as "
                    "text, so the rows train the chat format's own markers; remove them from the data unless that is "
                    "meant", rows, tokens)


def _check_lengths(tokenizer: Any, examples: Sequence[Example], max_length: int, context: int | None = None) -> int:
    """Tokens of the longest training example (its prompt and completion, plus a few for the chat template's end
    of turn); ConfigError where a prompt alone reaches ``max_length`` (naming the model's ``context`` where no
    --max-length could hold it), a warning counting the examples whose completion training cuts there."""
    prompts = [len(tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]) for e in examples]
    longest = max(range(len(prompts)), key=prompts.__getitem__)
    if prompts[longest] >= max_length:
        over = sum(1 for length in prompts if length >= max_length)
        start = " ".join(examples[longest].prompt[-1][1].split())[:40]
        raise ConfigError(
            f"max length {max_length} is too short for {over} of {len(prompts)} training prompts, which alone leave no "
            f"room for a completion (the longest, \"{start}…\", has {prompts[longest]} tokens); "
            + (f"raise --max-length above {prompts[longest]}, or remove those rows"
               if context is None or prompts[longest] < context else
               f"the model reads at most {context} tokens, so shorten or remove those rows")
        )
    # A completion longer than max_length tokens can hold is counted on that much of it: past it, training cuts.
    totals = [prompt + len(tokenizer(cut_for_tokens(e.completion, max_length), add_special_tokens=False)["input_ids"]) + 4
              for prompt, e in zip(prompts, examples)]
    cut = sum(1 for total in totals if total > max_length)
    if cut and is_main_process():
        log.warning("%d of %d training examples are longer than --max-length %d: training cuts their completions "
                    "there (the longest has %d tokens or more); raise --max-length to train on them whole",
                    cut, len(totals), max_length, max(totals))
    return max(totals)
