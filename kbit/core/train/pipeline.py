"""``kbit train``: supervised fine-tuning on a quantized base, driven only through the method's hooks.

The stages, each recorded in ``kbit.json`` as it completes so ``--resume`` continues after the last
one that finished:

1. plan (``plan.py``): every input checked, nothing written;
2. train (``fit.py``): load the base through ``build_quant_config``, ``prepare_model``, attach the
   adapter, SFT with trl; save ``adapter/``;
3. merge: carry out ``merge_policy``, check the merged model against the adapter model, ``merged/``;
4. quantize: the method's ``quantize_model`` on the merged model, ``quantized/``;
5. score: held-out answers before training (the base as ``kbit eval`` loads it) and after, and of every
   model the run ships (merged, quantized, exported) on the same items under the same answer budget;
6. finish: loss plot, model card, status "finished".

Only the main process writes; under torchrun the other ranks take part in training only.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.model.adapters import attach_adapter
from kbit.core.runs.cards import name_base_in_adapter, write_cards
from kbit.core.system.console import LOG_FILE_ONLY, LOG_NAME, run_log
from kbit.core.data import TaskData
from kbit.core.system.device import peak_memory_bytes
from kbit.core.measure.generation import generate_answers
from kbit.core.measure.metrics import task_scores
from kbit.core.measure.budget import GenerationBudget, generation_budget
from kbit.core.measure.sample_size import MIN_ITEMS, exact_match_stats, too_few
from kbit.core.measure.scoring import math_scorer
from kbit.core.model.bases import load_base, prepare_for_training
from kbit.core.model.merge import (adapter_effect, base_dtype, check_fidelity, computing_in, logit_agreement, merge_tolerance,
                             merged_model, probe_batches, save_model)
from kbit.core.model.quantized_linear import exact_activations
from kbit.core.quantize import calibration_texts, quantize_into
from kbit.core.runs.record import RunRecord, read_record, write_record
from kbit.core.runs.sections import HeldOut, Merge, Scores, Training
from kbit.core.runs.folder import RunFolder, atomic_directory
from kbit.core.train import checkpoints
from kbit.core.train.config import TrainConfig
from kbit.core.train.fit import CHECKPOINTS, Trained, load_adapter_weights, train_adapter
from kbit.core.train.outputs import write_loss_plot
from kbit.core.errors import Terminated
from kbit.core.train.plan import RunPlan, is_main_process, plan_run, process_count

log = logging.getLogger("kbit")


@attrs.frozen
class RunResult:
    run_dir: Path
    record: RunRecord | None  # None on the processes of a multi-process run that do not write


def run_training(config: TrainConfig, resume: bool = False) -> RunResult:
    """Plan, train, save, merge, quantize and score one run; returns its directory and metadata."""
    started = time.time()  # the wall time counts reading and checking the data too
    plan = plan_run(config, resume=resume)
    if plan.finished is not None:
        if is_main_process():  # nothing to continue: its record stays as it finished
            log.info("run %s finished already; nothing to resume (kbit eval %s scores it again)", plan.name, plan.run_dir)
        _leave_process_group()
        return RunResult(plan.run_dir, plan.finished if is_main_process() else None)
    if not is_main_process():
        _run_stages(plan, None, started)
        _leave_process_group()
        return RunResult(plan.run_dir, None)
    with _owned_run(plan, started) as folder:
        _run_stages(plan, folder.record, started, folder)
    record = folder.record
    _leave_process_group()
    return RunResult(plan.run_dir, record)


@contextlib.contextmanager
def _owned_run(plan: RunPlan, started: float) -> Iterator[RunFolder]:
    """Own the run folder for the stages (``RunFolder``): its lock, its record, and its status when they end.

    ``--overwrite`` moves the previous content aside and deletes it only once the new run finished.
    On any exception the record says "failed" (or "interrupted" for Ctrl-C and SIGTERM) with the error;
    a new run refused before it trains (bad input found once the model loaded) leaves no folder.
    """
    with RunFolder(plan.run_dir, replace=plan.config.overwrite and not plan.resume, started=started,
                   flag=None if plan.resume else "--output", provisional=not plan.resume) as folder:
        for name in folder.removed:
            log.warning("removed %s, left by the interrupted run", name)
        if plan.resume:
            for line in checkpoints.remove_incomplete(plan.run_dir / CHECKPOINTS):  # each says why
                log.warning("%s", line)
            record = folder.read_record() or _initial_record(plan)
            record.status, record.error, record.resumed = "running", None, meta.now()
            record.spec, record.config = plan.spec, plan.config
        else:
            record = _initial_record(plan)
        record.artifacts["log"] = LOG_NAME
        folder.record = record  # its status says why, should the stages stop
        write_record(plan.run_dir, record)
        with run_log(plan.run_dir):
            log.info("run %s in %s (method %s)", plan.name, plan.run_dir, plan.method.name)
            try:
                yield folder
            except BaseException as exc:
                log.error("run stopped: %s: %s", type(exc).__name__, exc, exc_info=True, extra=LOG_FILE_ONLY)
                if isinstance(exc, (KeyboardInterrupt, Terminated)) and is_main_process():
                    log.warning("run %s is interrupted; kbit train --resume %s continues it from its last checkpoint",
                                plan.name, plan.run_dir)
                raise


def _initial_record(plan: RunPlan) -> RunRecord:
    return RunRecord(
        kind="run",
        name=plan.name,
        created=meta.now(),
        method=plan.method.name,
        method_plugin=plan.method.provenance(),
        method_summary=plan.method.info.summary,
        method_options=dict(plan.config.options),
        spec=plan.spec,
        merge_policy=plan.policy,
        base_model=plan.source.to_dict(),
        dataset=plan.data.describe(),
        config=plan.config,
        sizing=dict(plan.sizing),
        train=Training(batch_size=plan.batch_size, world_size=process_count()),
        device=attrs.asdict(plan.device),
        decisions=dict(plan.decisions),
        trust_remote_code=plan.config.trust_remote_code,
        versions=meta.package_versions(),
    )


def _done(plan: RunPlan, record: RunRecord | None, artifact: str, marker: str) -> bool:
    """On ``--resume``: the stage that writes ``artifact`` completed before the interruption."""
    if not plan.resume:
        return False
    if record is None:  # another rank: read what rank 0 recorded
        record = read_record(plan.run_dir) or RunRecord()
    return record.has(artifact, plan.run_dir, marker)


def _run_stages(plan: RunPlan, record: RunRecord | None, started: float, folder: RunFolder | None = None) -> None:
    from transformers import set_seed

    set_seed(plan.config.seed)
    adapter_done = _done(plan, record, "adapter", "adapter_config.json")
    if adapter_done and (damage := checkpoints.adapter_damage(plan.run_dir / "adapter")):
        # read back from the final checkpoint (not trained again) and saved anew
        log.warning("adapter/ cannot be used: %s; taking the adapter from the last checkpoint again", damage)
        adapter_done = False
    if record is None and adapter_done:
        return  # nothing left for the other ranks: only training runs on every rank
    for reason in plan.sizing.values():
        log.warning("auto sizing: %s", reason)
    log.info("loading %s through %s", plan.source.name, plan.method.name)
    model = load_base(plan.method, plan.spec, plan.source.path, trust_remote_code=plan.config.trust_remote_code)
    model = attach_adapter(prepare_for_training(plan.method, plan.spec, plan.policy, model), plan.spec)
    if adapter_done:
        load_adapter_weights(model, plan.run_dir / "adapter", plan.spec)
        trained = None
    else:
        loftq = _initialise_adapter(plan, model)
        if folder is not None:
            folder.provisional = False  # training: what follows is kept, its status recorded, whatever happens
        trained = train_adapter(plan, model, on_log=_keep_losses(record) if record is not None else None)
        if record is None or not trained.is_main:
            return
        model = trained.model
        if loftq is not None:
            record.train.loftq = loftq
        _save_adapter(plan, record, trained)
    model.eval()
    # One answer budget for every variant the run scores, the deploy file's check included.
    budget = generation_budget(plan.tokenizer, plan.data.train, plan.config.max_new_tokens, model)
    _merge_and_quantize(plan, record, model)
    _score(plan, record, budget)
    _export(plan, record, model, budget.max_new_tokens)
    if plan.config.eval_limit:
        record.metrics.variants = _shipped_scores(plan, record, record.metrics.after, plan.config.eval_limit,
                                                  budget.max_new_tokens)
    _finish(plan, record, started)


def _keep_losses(record: RunRecord) -> Callable[[list[dict[str, float]], int], None]:
    """Keep the losses and step count so far in the record in memory: a run stopped mid-training records them."""
    def keep(history: list[dict[str, float]], steps: int) -> None:
        record.loss_history, record.train = history, record.train.updated(steps=steps)
    return keep


def _initialise_adapter(plan: RunPlan, model: Any) -> dict[str, float] | None:
    """LoftQ's start for the adapter where the spec asks for it (``-o init=loftq``); its errors, else None."""
    if plan.spec.adapter is None or plan.spec.adapter.init != "loftq":
        return None
    from kbit.core.model.loftq import initialise_from_bases

    log.info("initialising the adapter from the base's quantization error (LoftQ)")
    errors = initialise_from_bases(model, plan.method, plan.spec, plan.source.path,
                                   trust_remote_code=plan.config.trust_remote_code)
    log.info("LoftQ: relative weight error %.4f → %.4f", errors["relative_error_before"], errors["relative_error_after"])
    return errors


def _save_adapter(plan: RunPlan, record: RunRecord, trained: Trained) -> None:
    record.train = record.train.updated(steps=trained.steps, world_size=trained.world_size, resumed_from=trained.resumed_from,
                                        rank_adapter_digests=trained.digests, held_out_loss_items=trained.held_out_loss_items,
                                        **(trained.tokens or {}), **trained.speed)
    if trained.padding_free is not None:
        record.decisions["padding_free"] = trained.padding_free
    record.loss_history = trained.history
    with atomic_directory(plan.run_dir / "adapter") as staging:
        trained.model.save_pretrained(staging)
        plan.tokenizer.save_pretrained(staging)
        name_base_in_adapter(staging, plan.source.hub_id or plan.source.name)
        record.train = record.train.updated(adapter_files=sorted(os.listdir(staging)))
    record.artifacts["adapter"] = "adapter"
    write_record(plan.run_dir, record)


def _merge_and_quantize(plan: RunPlan, record: RunRecord, model: Any) -> None:
    policy = plan.policy
    if policy.action != "merge":
        record.merge = Merge(action=policy.action, reason=policy.reason)
        return
    merged_dir = plan.run_dir / "merged"
    if not _done(plan, record, "merged", "config.json"):
        log.info("merging the adapter into the %s base (%s)", policy.base, policy.dtype)
        merged, described = merged_model(plan.method, plan.spec, policy, plan.source.path, plan.run_dir / "adapter",
                                         plan.config.trust_remote_code)
        held = base_dtype(model)
        tolerance = plan.config.merge_tolerance if plan.config.merge_tolerance is not None else merge_tolerance(held, policy.dtype)
        probe = probe_batches(plan.tokenizer, plan.data.held_out, plan.config.max_length)
        # as the merged float model computes: its dtype, and no runtime rounding of activations
        with computing_in(model, policy.dtype), exact_activations(model):
            agreement = {**logit_agreement(model, merged, probe), "adapter_effect": adapter_effect(model, probe)}
        record.merge = Merge.from_dict({"action": policy.action, "reason": policy.reason, "base": policy.base,
                                        "base_used": described, "dtype": policy.dtype, "base_dtype": held,
                                        "min_top1_agreement": plan.config.merge_min_agreement,
                                        "max_error_share": tolerance, **agreement})
        check_fidelity(agreement, plan.config.merge_min_agreement, plan.method.name, f"merging into {described}",
                       tolerance=tolerance)
        record.merge = record.merge.updated(files=save_model(merged, plan.tokenizer, merged_dir))
        del merged
        record.artifacts["merged"] = "merged"
        write_record(plan.run_dir, record)
    if plan.method.implements("quantize_model") and not _done(plan, record, "quantized", "config.json"):
        log.info("quantizing the merged model with %s", plan.method.name)
        calibration = calibration_texts(plan.tokenizer, plan.data.train, plan.spec, plan.method)
        record.quantize = quantize_into(plan.method, plan.spec, merged_dir, calibration, plan.run_dir / "quantized")
        record.artifacts["quantized"] = "quantized"
        write_record(plan.run_dir, record)


def _export(plan: RunPlan, record: RunRecord, model: Any, max_new_tokens: int) -> None:
    """The method's deploy files, each checked in the runtime (llama.cpp where installed) against the
    trained adapter model as strictly as the merge: the merged model as ``MergePolicy.export``'s GGUF
    type, and the adapter as a llama.cpp LoRA GGUF over the base's own file (``MergePolicy.adapter_gguf``)."""
    from kbit.core.export.check import Reference
    from kbit.core.export.pipeline import export_adapter_in_run, export_in_run

    policy, limit = plan.policy, plan.config.eval_limit or None
    reference = Reference(model, plan.tokenizer, record.metrics.exact_match_after)
    with computing_in(model, policy.dtype):  # as the merged model (and the file) computes
        if policy.export and "merged" in record.artifacts and not _exported(plan, record, f"{plan.name}-{policy.export}.gguf"):
            log.info("writing the %s GGUF file", policy.export)
            export_in_run(plan.run_dir, record, policy.export, reference, min_top1=plan.config.merge_min_agreement,
                          limit=limit, head_type=policy.export_head, max_new_tokens=max_new_tokens)
        if policy.adapter_gguf and not _exported(plan, record, f"{plan.name}-lora.gguf"):
            log.info("writing the adapter as a llama.cpp LoRA GGUF")
            export_adapter_in_run(plan.run_dir, record, reference, min_top1=plan.config.merge_min_agreement,
                                  limit=limit, max_new_tokens=max_new_tokens)


def _exported(plan: RunPlan, record: RunRecord, file_name: str) -> bool:
    """On ``--resume``: the file was written and recorded before the interruption."""
    from kbit.core.export.pipeline import EXPORTS_DIR

    name = f"{EXPORTS_DIR}/{file_name}"
    return plan.resume and (plan.run_dir / name).is_file() and any(e.file == name for e in record.exports)


def _score(plan: RunPlan, record: RunRecord, budget: GenerationBudget) -> None:
    """Held-out answers before and after training, on the backend's inference path.

    Scored after the merge check. "Before" is the same quantized base (identical base weights), loaded
    afresh as ``kbit eval`` loads it (``_base_scores``); "after" the saved adapter on it, loaded the same way
    (``_adapter_scores``).
    """
    record.metrics = Scores()
    if not plan.config.eval_limit:
        return
    limit, new_tokens = plan.config.eval_limit, budget.max_new_tokens
    log.info("scoring %d held-out items before and after training", min(limit, len(plan.data.held_out)))
    before = _base_scores(plan, limit, new_tokens)
    after = _adapter_scores(plan, limit, new_tokens)
    record.metrics = Scores(before=before, after=after, generation=budget.to_dict(), min_items=MIN_ITEMS,
                            too_few_items=too_few(after.items),
                            scoring=math_scorer() if plan.data.task in ("arithmetic", "openmath") else None)


def _base_scores(plan: RunPlan, limit: int, new_tokens: int) -> HeldOut:
    """The base through the run's method and spec, loaded by ``kbit eval``'s loader and scored as its rows
    are: the figure ``kbit eval RUN --variant base --method METHOD`` gives (same items and budget).

    Not the trained model with its adapter switched off: ``prepare_model`` (peft's k-bit preparation
    upcasts norms and embeddings to float32) and training leave the in-memory base computing otherwise
    than the base as loaded, which moved greedy answers of the tiny test model.
    """
    from kbit.core.evaluate.loading import DataRequest, method_base

    # DataRequest(): load_candidate does not read it; the items are plan.data's
    return _loaded_scores(plan, method_base(plan.source.name, plan.source.path, str(plan.run_dir), DataRequest(),
                                            plan.config.trust_remote_code, plan.method.name, plan.spec), limit, new_tokens)


def _adapter_scores(plan: RunPlan, limit: int, new_tokens: int) -> HeldOut:
    """The saved adapter on the base loaded afresh, as ``kbit eval RUN --variant adapter`` loads and scores it.

    Not the trained model in memory, for the reason ``_base_scores`` gives: on SmolLM2 (qlora, bf16) the model in
    memory answered 6 of 10 held-out sums and the adapter as a user loads it 7, so ``kbit eval`` did not reproduce
    the run's figure.
    """
    from kbit.core.evaluate.loading import DataRequest, run_adapter

    return _loaded_scores(plan, run_adapter(plan.name, plan.run_dir, plan.source.path, DataRequest(),
                                            plan.config.trust_remote_code, plan.method.name, plan.spec), limit, new_tokens)


def _loaded_scores(plan: RunPlan, candidate: Any, limit: int, new_tokens: int) -> HeldOut:
    """``candidate`` loaded by ``kbit eval``'s loader and scored on the run's first ``limit`` held-out items."""
    from kbit.core.system.device import release_memory
    from kbit.core.evaluate.loading import load_candidate

    if not plan.data.held_out[:limit]:
        return HeldOut()  # nothing to load a model for
    loaded = load_candidate(candidate, plan.device)
    try:
        return _held_out_scores(loaded.model, loaded.tokenizer, plan.data, limit, new_tokens)
    finally:
        del loaded
        gc.collect()
        release_memory(plan.device)


SHIPPED = ("merged", "quantized")  # model folders a run writes, scored as stored


def _shipped_scores(plan: RunPlan, record: RunRecord, adapter: HeldOut, limit: int, new_tokens: int) -> dict[str, HeldOut]:
    """Held-out exact match of each variant of the run: the adapter model, each model folder it wrote
    (loaded as a user would load it) and each deploy file (measured by its export check on the same
    items under the same budget)."""
    from kbit.core.system.device import device_map_for
    from kbit.core.evaluate.loading import load_plain

    quantized = plan.method.build_quant_config(plan.spec) is not None or plan.method.implements("quantize_base")
    base = "its quantized base" if quantized else "its base"
    variants = {"adapter": _variant_figures(adapter, f"the trained adapter on {base}, as loaded")}
    for name in SHIPPED:
        if name not in record.artifacts:
            continue
        log.info("scoring the %s model on the same %d held-out items", name, adapter.items)
        shipped = load_plain(str(plan.run_dir / record.artifacts[name]), device_map=device_map_for(plan.device)).eval()
        what = f"{name}/ as saved" + (f" ({record.quantize.format})" if name == "quantized" and record.quantize else "")
        variants[name] = _variant_figures(_held_out_scores(shipped, plan.tokenizer, plan.data, limit, new_tokens), what)
        del shipped
    for export in record.exports:
        items = export.items
        if export.exact_match is None or not items:
            continue
        hits = int(round(export.exact_match * items))
        variants[f"gguf {export.type}"] = HeldOut.from_dict(
            {"model": f"{export.file} (its export check)", "items": items,
             **exact_match_stats([1.0] * hits + [0.0] * (items - hits))})
    return variants


def _variant_figures(scores: HeldOut, what: str) -> HeldOut:
    """The figures a variant's row keeps: its scores without the samples, named by ``what``."""
    return HeldOut(model=what, items=scores.items, exact_match=scores.exact_match, exact_match_hits=scores.exact_match_hits,
                   exact_match_ci95=scores.exact_match_ci95, f1=scores.f1, answers_cut=scores.answers_cut)


def _finish(plan: RunPlan, record: RunRecord, started: float) -> None:
    record.status, record.peak_memory_bytes = "finished", peak_memory_bytes(plan.device)
    record.wall_time_s = round(time.time() - started, 1)
    if record.loss_history:
        write_loss_plot(plan.run_dir / "loss.png", record.loss_history, plan.name)
        record.artifacts["loss_plot"] = "loss.png"
    write_cards(plan.run_dir, record)
    record.artifacts["model_card"] = "README.md"
    write_record(plan.run_dir, record)


def _held_out_scores(model: Any, tokenizer: Any, data: TaskData, limit: int, max_new_tokens: int) -> HeldOut:
    items = list(data.held_out[:limit])
    if not items:
        return HeldOut()
    # as kbit eval answers and scores (same batch size, same task_scores): one figure for one model
    answers = generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens)
    predictions = answers.texts
    _, means = task_scores(data.task, predictions, items)
    return HeldOut.from_dict({"items": len(items), "answers_cut": answers.cut,
                              "mean_new_tokens": round(sum(answers.new_tokens) / len(items), 1),
                              "samples": [{"messages": e.prompt_messages(), "prediction": p, "gold": e.answers[0]}
                                          for p, e in list(zip(predictions, items))[:5]], **means})


def _leave_process_group() -> None:
    """Under torchrun/accelerate: wait for rank 0 to finish writing, then tear the group down.

    A rank that exits while the others still hold the gloo group can abort at interpreter exit
    ("terminate called without an active exception"), failing the whole launch.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
