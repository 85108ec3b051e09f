"""Running a comparison: each method's run trained, resumed or reused, then every variant evaluated.

One method at a time, in the order given. A method that fails — it cannot run here, an option
value it refuses, a failed merge check, an error while training or evaluating — is recorded in its
row with the one-line reason and the others go on; Ctrl-C and SIGTERM stop the comparison (the
run being trained is marked interrupted and resumed by the next ``kbit compare``). ``report.json``
and ``report.md`` are rewritten after every method, so an interrupted comparison still shows what
it finished; ``report.png`` is drawn when the comparison ends (or is interrupted).

Evaluations are kept in ``evals/`` and reused while the run they scored is unchanged (the sha256
of its ``kbit.json``) and the evaluation settings are the same; the base model is evaluated once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from kbit.core.compare import report as reporting
from kbit.core.compare.plan import CompareConfig, ComparePlan, PlannedMethod, plan_compare
from kbit.core.compare.render import steps
from kbit.core.compare.runs import RESUME, REUSE
from kbit.core.errors import ConfigError, KbitError, Terminated
from kbit.core.runs.record import RunRecord, read_record, record_digest
from kbit.core.runs.folder import RunFolder

log = logging.getLogger("kbit")
VARIANTS = ("adapter", "merged", "quantized")  # what a run can hold; the base is evaluated once
MARKERS = {"adapter": "adapter_config.json", "merged": "config.json", "quantized": "config.json"}

Progress = Callable[[str], None]


@attrs.frozen
class CompareResult:
    out_dir: Path
    report: dict[str, Any]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [m for m in self.report["methods"] if m["status"] == "failed"]

    @property
    def every_method_failed(self) -> bool:
        return len(self.failed) == len(self.report["methods"])


def run_compare(config: CompareConfig, progress: Progress = log.info) -> CompareResult:
    """Plan, then train/reuse and evaluate every method; returns the folder and the report."""
    plan = plan_compare(config)
    started = time.time()
    previous = reporting.previous_methods(plan.out_dir)  # read before the new report replaces it
    previous_base = reporting.previous_base(plan.out_dir)
    with _owned_folder(plan) as report:
        for planned in plan.methods:
            entry = _compare_method(plan, planned, previous.get(planned.name), previous_base, report, progress)
            reporting.set_method(report, entry)
            reporting.write(plan.out_dir, report, with_plot=False)  # the plot, slower, once at the end
        report.update(status="finished", seconds=round(time.time() - started, 1))
        reporting.write(plan.out_dir, report)
    return CompareResult(plan.out_dir, report)


@contextlib.contextmanager
def _owned_folder(plan: ComparePlan) -> Iterator[dict[str, Any]]:
    """Own the comparison folder while comparing (``RunFolder``): its lock, and its report's status when it ends."""
    with RunFolder(plan.out_dir, replace=plan.replace_other_data, flag="--out") as folder:
        report = reporting.new_report(plan)

        def record_stop(exc: BaseException) -> None:
            interrupted = isinstance(exc, (KeyboardInterrupt, Terminated))
            report.update(status="interrupted" if interrupted else "failed", error=f"{type(exc).__name__}: {exc}")
            # Methods run in order: the first one still pending is the one the stop cut short.
            current = next((m for m in report["methods"] if m["status"] == "pending"), None)
            if current is not None:
                current["status"] = report["status"]
            with contextlib.suppress(OSError):
                reporting.write(plan.out_dir, report)

        folder.on_stop = record_stop
        reporting.write(plan.out_dir, report, with_plot=False)
        yield report


def _compare_method(plan: ComparePlan, planned: PlannedMethod, previous: dict[str, Any] | None,
                    previous_base: dict[str, Any] | None, report: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train, resume or reuse the method's run and evaluate it: the method's report entry, failed or not."""
    entry: dict[str, Any] = {
        "method": planned.name, "status": "failed", "action": None, "reason": None,
        "run": _relative(planned.run_dir, plan.out_dir), "options": dict(planned.choice.options),
        "skipped_options": list(planned.choice.skipped), "rows": [], "seconds": {},
    }
    if planned.choice.problem is not None:
        progress(f"{planned.name}: cannot run here: {planned.choice.problem}")
        return {**entry, "reason": planned.choice.problem}
    try:
        started = time.time()
        record, entry["action"] = _obtain_run(planned, progress)
        entry["seconds"]["run"] = round(time.time() - started, 1)
        entry.update(reporting.run_figures(record))
        if record.status != "finished":
            raise ConfigError(f"the run ended with status {record.status}: {record.error}")
        started = time.time()
        _ensure_base_row(plan, planned, record, previous_base, report, progress)
        entry["rows"], entry["evaluated"], reused = _evaluate(plan, planned, previous, progress)
        entry["seconds"]["eval"] = round(time.time() - started, 1)
        entry["eval_reused"] = reused
        entry["status"] = "finished"
    except Exception as exc:  # noqa: BLE001 - one method's failure must not stop the others
        entry["reason"] = _one_line(exc)
        progress(f"{planned.name}: failed: {entry['reason']}")
        log.debug("%s failed", planned.name, exc_info=True)
    finally:
        _release_memory()
    return entry


def _obtain_run(planned: PlannedMethod, progress: Progress) -> tuple[RunRecord, str]:
    """The method's finished run: reused as it is, resumed, or trained now. Returns its record and the action."""
    decision = planned.decision
    if decision.action == REUSE:
        record = read_record(planned.run_dir)
        progress(f"{planned.name}: reusing the finished run {planned.run_dir} (written {record.updated}); "
                 "not training it again")
        return record, "reused"
    from kbit.core.train.pipeline import run_training  # imports the training stack: only when it trains

    if decision.action == RESUME:
        progress(f"{planned.name}: resuming the unfinished run {planned.run_dir}")
        before = read_record(planned.run_dir)
        record = run_training(planned.train, resume=True).record
        # Without its adapter saved nor a checkpoint to resume from, training started again at step 1: a run trained now.
        kept = bool(before is not None and before.artifacts.get("adapter")) or bool(record.train and record.train.resumed_from)
        return record, "resumed" if kept else "trained"
    why = f" (replacing a run that {decision.replaces})" if decision.replaces else ""
    progress(f"{planned.name}: training {steps(planned.train.max_steps)} into {planned.run_dir}{why}")
    train = attrs.evolve(planned.train, overwrite=bool(decision.replaces))
    return run_training(train).record, "trained"


def _ensure_base_row(plan: ComparePlan, planned: PlannedMethod, record: RunRecord, previous: dict[str, Any] | None,
                     report: dict[str, Any], progress: Progress) -> None:
    """Evaluate the base model once, through the first finished run (its base, on the same held-out items)."""
    if report.get("base", {}).get("status") == "finished":
        return
    key = {"base_model": record.base_model.to_dict(), "dataset": record.dataset.fingerprint,
           **_eval_settings(plan)}
    out = plan.out_dir / "evals" / "base"
    try:
        rows = _kept_rows(out, key, previous)
        reused = rows is not None
        if reused:
            progress(f"base: reusing the evaluation in {out} (same base, data and settings)")
        else:
            progress(f"base: evaluating {plan.model_name} once, on {plan.config.limit} held-out items")
            rows = _run_eval(out, planned.run_dir, ("base",), plan)
        report["base"] = {"status": "finished", "evaluated": key, "reused": reused,
                          "rows": rows}
    except Exception as exc:  # noqa: BLE001 - the methods' rows are still worth having
        report["base"] = {"status": "failed", "reason": _one_line(exc)}
        progress(f"base: evaluation failed: {report['base']['reason']}")


def _evaluate(plan: ComparePlan, planned: PlannedMethod, previous: dict[str, Any] | None,
              progress: Progress) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """The method's rows: every variant its run holds, evaluated now or kept from an earlier comparison."""
    from kbit.core.evaluate.loading import run_gguf_files

    run = planned.run_dir
    record = read_record(run)
    variants = tuple(v for v in VARIANTS if (run / v / MARKERS[v]).is_file())
    if not variants:
        raise ConfigError(f"the run {run} holds no adapter, merged or quantized model to evaluate")
    variants += ("gguf",) if run_gguf_files(run, record) else ()  # the deploy file qat, qalora, gguf train for
    key = {"run": record_digest(run), "variants": list(variants),
           **_eval_settings(plan)}
    out = plan.out_dir / "evals" / planned.name
    rows = _kept_rows(out, key, previous)
    reused = rows is not None
    if reused:
        progress(f"{planned.name}: reusing the evaluation in {out} (the run and the settings are unchanged)")
    else:
        progress(f"{planned.name}: evaluating {', '.join(variants)} on {plan.config.limit} held-out items")
        rows = _run_eval(out, run, variants, plan)
    return rows, key, reused


def _kept_rows(out: Path, key: dict[str, Any], previous: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The rows of the evaluation in ``out`` when the previous comparison made it with this ``key``."""
    if not previous or previous.get("evaluated") != key:
        return None
    return reporting.read_eval_rows(out)


def _run_eval(out: Path, run: Path, variants: tuple[str, ...], plan: ComparePlan) -> list[dict[str, Any]]:
    from kbit.core.evaluate.pipeline import build_eval_config, run_eval

    settings = build_eval_config(paths=[str(run)], variants=list(variants), limit=plan.config.limit, out=str(out))
    return run_eval(settings).report["rows"]


def _eval_settings(plan: ComparePlan) -> dict[str, Any]:
    from kbit.core.evaluate.pipeline import EvalConfig

    defaults = EvalConfig()
    return {"limit": plan.config.limit, "max_new_tokens": defaults.max_new_tokens, "batch_size": defaults.batch_size}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(exc, KbitError) and first else f"{type(exc).__name__}: {first}".rstrip(": ")


def _release_memory() -> None:
    """Free what the method's training and evaluation held before the next one loads its models."""
    gc.collect()
    if "torch" not in sys.modules:
        return  # nothing was loaded (a reused run and evaluation): do not import torch for this
    with contextlib.suppress(Exception):
        from kbit.core.system.device import detect_device, release_memory

        release_memory(detect_device())

