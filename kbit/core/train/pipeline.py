"""``kbit train``: supervised fine-tuning on a quantized base, driven only through the method's hooks.

spec ← resolve_spec; quant config ← build_quant_config; load; prepare_model; attach the adapter;
SFT with trl's SFTTrainer; save the adapter; carry out merge_policy; score held-out answers; write
``kbit.json``, the model card and the loss plot. Everything a user can get wrong is checked before
the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import attrs

from kbit.core import metadata as meta
from kbit.core.adapters import adapter_settings, attach_adapter
from kbit.core.cards import name_base_in_adapter, write_cards
from kbit.core.data import TaskData, load_task_data
from kbit.core.device import DeviceInfo, detect_device
from kbit.core.errors import ConfigError
from kbit.core.evaluate.generation import generate_answers, render_prompt
from kbit.core.evaluate.scoring import score
from kbit.core.merge import logit_agreement, merged_model, save_model
from kbit.core.method import Method
from kbit.core.models import ModelSource, load_causal_lm, load_tokenizer, resolve_model
from kbit.core.naming import run_name
from kbit.core.quantize import calibration_texts, quantize_into
from kbit.core.registry import get_method
from kbit.core.rundir import LOCK_NAME, RunLock, atomic_directory, check_writable, clear_staging
from kbit.core.sizing import auto_batch_size, auto_rank, concrete_adapter_spec
from kbit.core.spec import QuantizationSpec
from kbit.core.train.config import TrainConfig
from kbit.core.train.outputs import write_loss_plot

log = logging.getLogger("kbit")
RUNS_ROOT = Path("runs")
CHECKPOINTS = "checkpoints"


@attrs.frozen
class RunPlan:
    """Everything decided before any heavy work: resolved spec, data, model, sizes, directory."""

    config: TrainConfig
    method: Method
    spec: QuantizationSpec
    device: DeviceInfo
    data: TaskData
    source: ModelSource
    tokenizer: Any
    batch_size: int
    sizing: dict[str, str]
    name: str
    run_dir: Path
    resume: bool


@attrs.frozen
class RunResult:
    run_dir: Path
    metadata: dict[str, Any]


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def plan_run(config: TrainConfig, resume: bool = False) -> RunPlan:
    """Validate every input and decide the run; raises ConfigError before anything is written."""
    device = detect_device()
    method = get_method(config.method)
    method.check_requirements(device)
    spec = method.resolve_spec(config.options, device)
    adapter = adapter_settings(spec)
    data = load_task_data(config.dataset, columns=config.columns, held_out_fraction=config.held_out_fraction,
                          max_examples=config.max_examples, seed=config.seed)
    if not data.train:
        raise ConfigError(f"dataset {data.source} has no training examples")
    source = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code=config.trust_remote_code)
    _check_lengths(tokenizer, data, config.max_length)
    model_config = _model_config(source, config.trust_remote_code)
    sizing: dict[str, str] = {}
    if adapter["r"] == "auto":
        rank, sizing["r"] = auto_rank(model_config.hidden_size)
        spec = concrete_adapter_spec(spec, rank)
    batch_size = config.batch_size
    if batch_size == "auto":
        batch_size, sizing["batch_size"] = auto_batch_size(
            hidden_size=model_config.hidden_size, layers=model_config.num_hidden_layers,
            vocab_size=model_config.vocab_size, max_length=config.max_length,
            model_bytes=_weights_bytes(Path(source.path)), memory_bytes=device.memory_bytes,
            device_kind=device.kind, checkpointing=bool(spec.extras.get("gradient_checkpointing", True)),
        )
    policy = method.merge_policy(spec)
    head = (policy.lm_head_dtype or policy.dtype) if policy.action == "merge" else spec.extras.get("compute_dtype", "float32")
    name = config.name or run_name(source.name, data.name, spec, head)
    run_dir = Path(config.output) if config.output else RUNS_ROOT / name
    if resume:
        if not (run_dir / meta.FILENAME).is_file():
            raise ConfigError(f"cannot resume: {run_dir} is not a kbit run (no {meta.FILENAME})")
    elif is_main_process() and run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()) and not config.overwrite:
        raise ConfigError(f"output directory {run_dir} is not empty; pass --overwrite to replace it or --resume to continue it")
    check_writable(run_dir, min_free_bytes=3 * _weights_bytes(Path(source.path)) + (64 << 20))
    return RunPlan(config, method, spec, device, data, source, tokenizer, batch_size, sizing, name, run_dir, resume)


def _model_config(source: ModelSource, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the model config in {source.path}: {str(exc).splitlines()[0]}") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise ConfigError(f"model type '{config.model_type}' in {source.path} is not a causal language model")
    return config


def _weights_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def _check_lengths(tokenizer: Any, data: TaskData, max_length: int) -> None:
    longest = max((len(tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"]), i)
                  for i, e in enumerate(data.train))
    if longest[0] >= max_length:
        raise ConfigError(
            f"max length {max_length} is too short: training prompt {longest[1] + 1} alone has {longest[0]} tokens; "
            f"raise --max-length above {longest[0]}"
        )


def _sft_dataset(tokenizer: Any, examples) -> Any:
    from datasets import Dataset

    if getattr(tokenizer, "chat_template", None):
        rows = [{"prompt": e.prompt_messages(), "completion": [{"role": "assistant", "content": e.completion}]} for e in examples]
    else:
        rows = [{"prompt": render_prompt(tokenizer, e), "completion": e.completion + (tokenizer.eos_token or "")} for e in examples]
    return Dataset.from_list(rows)


def _held_out_scores(model: Any, tokenizer: Any, data: TaskData, limit: int, max_new_tokens: int) -> dict[str, Any]:
    items = list(data.held_out[:limit])
    if not items:
        return {"exact_match": None, "items": 0}
    predictions, speed = generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens)
    scores = [score(data.task, p, list(e.answers)) for p, e in zip(predictions, items)]
    result = {"items": len(items), "tokens_per_s": round(speed, 1), "samples": [
        {"prompt": e.prompt[-1][1], "prediction": p, "gold": e.answers[0]} for p, e in list(zip(predictions, items))[:5]]}
    for key in scores[0]:
        result[key] = sum(s[key] for s in scores) / len(scores)
    return result


def _probe_batches(tokenizer: Any, data: TaskData, count: int = 16) -> list[dict[str, Any]]:
    texts = [render_prompt(tokenizer, e) + e.completion for e in data.held_out[:count]]
    if not texts:
        return []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        return [dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))]
    finally:
        tokenizer.padding_side = side


def _peak_memory(device: DeviceInfo) -> int:
    if device.kind == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _trainer(plan: RunPlan, model: Any) -> Any:
    from trl import SFTConfig

    from kbit.core.device import torch_dtype
    from kbit.core.train.callbacks import NonFiniteLossCallback
    from kbit.core.train.trainer import KbitSFTTrainer

    config, compute = plan.config, plan.spec.extras.get("compute_dtype", "float32")
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    args = SFTConfig(
        output_dir=str(plan.run_dir / CHECKPOINTS),
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=plan.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.scheduler,
        warmup_steps=int(math.ceil(config.warmup_ratio * max(config.max_steps, 1))),
        logging_steps=config.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # the default hides NaN losses, which must stop the run
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        packing=config.packing,
        report_to=[] if config.report_to == "none" else [config.report_to],
        bf16=compute == "bfloat16",
        fp16=compute == "float16",
        use_cpu=plan.device.kind == "cpu",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        dataloader_num_workers=0,
        disable_tqdm=not is_main_process(),
        ddp_find_unused_parameters=False,
    )
    return KbitSFTTrainer(
        model=model,
        args=args,
        train_dataset=_sft_dataset(plan.tokenizer, plan.data.train),
        processing_class=plan.tokenizer,
        callbacks=[NonFiniteLossCallback()],
        adapter_dtype=torch_dtype(plan.spec.extras.get("adapter_dtype", "float32")),
    )


def run_training(config: TrainConfig, resume: bool = False) -> RunResult:
    """Plan, train, save, merge and score one run; returns its directory and metadata."""
    plan = plan_run(config, resume=resume)
    main = is_main_process()
    lock = RunLock(plan.run_dir)
    started = time.time()
    record: dict[str, Any] = {}
    if main:
        if plan.config.overwrite and plan.run_dir.exists() and not resume:
            lock.acquire()
            for child in plan.run_dir.iterdir():
                if child.name != LOCK_NAME:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            lock.acquire()
            if resume:
                for name in clear_staging(plan.run_dir):
                    log.warning("removed %s, left by the interrupted run", name)
        record = _initial_record(plan)
        meta.write_metadata(plan.run_dir, record)
    try:
        _train_and_finish(plan, record, started)
    except BaseException as exc:
        if main and record:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", wall_time_s=round(time.time() - started, 1))
            meta.write_metadata(plan.run_dir, record)
        raise
    else:
        _leave_process_group()
    finally:
        lock.release()
    return RunResult(plan.run_dir, record)


def _initial_record(plan: RunPlan) -> dict[str, Any]:
    policy = plan.method.merge_policy(plan.spec)
    return {
        "kind": "run",
        "status": "running",
        "error": None,
        "name": plan.name,
        "created": meta.now(),
        "method": plan.method.name,
        "method_plugin": {"distribution": plan.method.distribution, "version": plan.method.version},
        "method_summary": plan.method.info.summary,
        "method_options": dict(plan.config.options),
        "spec": plan.spec.to_dict(),
        "merge_policy": policy.to_dict(),
        "base_model": plan.source.to_dict(),
        "dataset": plan.data.describe(),
        "config": plan.config.to_dict(),
        "sizing": plan.sizing,
        "train": {"batch_size": plan.batch_size},
        "device": attrs.asdict(plan.device),
        "trust_remote_code": plan.config.trust_remote_code,
        "versions": meta.package_versions(),
        "artifacts": {},
    }


def _train_and_finish(plan: RunPlan, record: dict[str, Any], started: float) -> None:
    from transformers import set_seed

    set_seed(plan.config.seed)
    for key, reason in plan.sizing.items():
        log.warning("auto sizing: %s", reason)
    quant_config = plan.method.build_quant_config(plan.spec)
    compute = plan.spec.extras.get("compute_dtype", "float32")
    model = load_causal_lm(plan.source.path, quant_config=quant_config, dtype=compute,
                           trust_remote_code=plan.config.trust_remote_code)
    metrics: dict[str, Any] = {}
    model = attach_adapter(plan.method.prepare_model(model, plan.spec), plan.spec)
    trainer = _trainer(plan, model)
    checkpoint = _last_checkpoint(plan.run_dir / CHECKPOINTS) if plan.resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    digests = _adapter_digests(trainer.model)
    if not trainer.is_world_process_zero():
        return
    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    record["train"].update(steps=trainer.state.global_step, world_size=trainer.args.world_size,
                           resumed_from=checkpoint and Path(checkpoint).name, rank_adapter_digests=digests)
    record["loss_history"] = history
    peft_model = trainer.model
    adapter_dir = plan.run_dir / "adapter"
    with atomic_directory(adapter_dir) as staging:
        peft_model.save_pretrained(staging)
        plan.tokenizer.save_pretrained(staging)
        name_base_in_adapter(staging, plan.source.hub_id or plan.source.name)
    record["artifacts"]["adapter"] = "adapter"
    peft_model.eval()
    policy = plan.method.merge_policy(plan.spec)
    record["merge"] = {"action": policy.action, "reason": policy.reason}
    if policy.action == "merge":
        merged = merged_model(plan.source.path, adapter_dir, policy, quant_config, compute, plan.config.trust_remote_code)
        agreement = logit_agreement(peft_model, merged, _probe_batches(plan.tokenizer, plan.data))
        save_model(merged, plan.tokenizer, plan.run_dir / "merged")
        record["artifacts"]["merged"] = "merged"
        record["merge"].update(base=policy.base, dtype=policy.dtype, **agreement)
        del merged
        if plan.method.implements("quantize_model"):
            calibration = calibration_texts(plan.tokenizer, plan.data.train, plan.spec, plan.method)
            record["quantize"] = quantize_into(plan.method, plan.spec, plan.run_dir / "merged", calibration,
                                               plan.run_dir / "quantized")
            record["artifacts"]["quantized"] = "quantized"
    if plan.config.eval_limit:
        # Scored after the merge check, on the backend's inference path. "Before" is the same
        # quantized base with the adapter switched off, so both numbers see identical base weights.
        generator = plan.method.prepare_inference(peft_model, plan.spec)
        limit, new_tokens = plan.config.eval_limit, plan.config.max_new_tokens
        with generator.disable_adapter():
            metrics["before"] = _held_out_scores(generator, plan.tokenizer, plan.data, limit, new_tokens)
        metrics["after"] = _held_out_scores(generator, plan.tokenizer, plan.data, limit, new_tokens)
    metrics["exact_match_before"] = metrics.get("before", {}).get("exact_match")
    metrics["exact_match_after"] = metrics.get("after", {}).get("exact_match")
    record["metrics"] = metrics
    record.update(status="finished", wall_time_s=round(time.time() - started, 1), peak_memory_bytes=_peak_memory(plan.device))
    if history:
        write_loss_plot(plan.run_dir / "loss.png", history, plan.name)
        record["artifacts"]["loss_plot"] = "loss.png"
    write_cards(plan.run_dir, record)
    record["artifacts"]["model_card"] = "README.md"
    meta.write_metadata(plan.run_dir, record)


def _leave_process_group() -> None:
    """Under torchrun/accelerate: wait for rank 0 to finish writing, then tear the group down.

    A rank that exits while the others still hold the gloo group can abort at interpreter exit
    ("terminate called without an active exception"), failing the whole launch.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _adapter_digests(model: Any) -> list[str]:
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


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None
    return get_last_checkpoint(str(folder))
