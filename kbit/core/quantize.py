"""Post-training quantization of a full-precision model through a method's ``quantize_model`` hook.

Used by ``kbit train`` (after the merge, for methods that implement the hook) and by
``kbit quantize`` (on a finished run or a plain model directory). Calibration texts are the run's
training examples as the model saw them: the rendered prompt followed by the completion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.runs.cards import write_cards
from kbit.core.errors import ConfigError
from kbit.core.methods.method import Method
from kbit.core.runs.folder import RunFolder, atomic_directory, is_free
from kbit.core.runs.record import RunRecord, read_record, write_record
from kbit.core.contract.spec import QuantizationSpec
from kbit.core.runs.outputs import claim, enclosing_run, kbit_kind

DEFAULT_CALIBRATION_SAMPLES = 64

log = logging.getLogger(__name__)


def calibration_texts(tokenizer: Any, examples: Sequence[Any], spec: QuantizationSpec, method: Method) -> list[str]:
    """The first ``spec.calibration.samples`` training examples, rendered; [] if not needed."""
    if not method.info.needs_calibration:
        return []
    from kbit.core.measure.generation import render_prompt

    count = spec.calibration.samples if spec.calibration else DEFAULT_CALIBRATION_SAMPLES
    return [render_prompt(tokenizer, e) + e.completion for e in list(examples)[:count]]


def quantize_into(method: Method, spec: QuantizationSpec, model_dir: Path, calibration: list[str], target: Path,
                  metadata: Callable[[dict[str, Any]], RunRecord] | None = None, exclusive: bool = False) -> dict[str, Any]:
    """Quantize ``model_dir`` into ``target`` atomically (``exclusive``: see ``atomic_directory``); returns what a run
    records as its ``quantize``.

    ``metadata(result)``, when given, returns the record written as ``kbit.json`` inside ``target``
    before it appears.
    """
    from kbit.core.system.console import route_loguru

    route_loguru()
    started = time.time()
    with atomic_directory(target, exclusive) as staging:
        method.quantize_model(Path(model_dir), spec, calibration, staging)
        if not (staging / "config.json").is_file():
            raise ConfigError(f"method '{method.name}' wrote no model into {target} (no config.json)")
        config = json.loads((staging / "config.json").read_text())
        quant = config.get("quantization_config") or {}
        record = {
            "method": method.name,
            "spec": spec.to_dict(),
            "seconds": round(time.time() - started, 1),
            "calibration_samples": len(calibration),
            "format": quant.get("quant_method", ""),
            "config_groups": quant.get("config_groups", {}),
            "size_bytes": sum(f.stat().st_size for f in staging.glob("*.safetensors")),
            "source": str(model_dir),
            "files": sorted([p.name for p in staging.iterdir()] + ([meta.FILENAME] if metadata is not None else [])),
        }
        if metadata is not None:
            write_record(staging, metadata(record))
    return record


def run_examples(record: RunRecord) -> Any:
    """The train and held-out examples of the run described by ``record``, rebuilt from its config."""
    from kbit.core.data import check_recorded_file, check_trained_on, load_task_data

    config = record.config
    if config is None:
        raise ConfigError(f"the run {record.name or ''} has no recorded settings in its kbit.json; it is incomplete or was edited")
    check_recorded_file(config.dataset, record.name or "", held_out=config.held_out)
    data = load_task_data(config.dataset, columns=config.columns, held_out=config.held_out,
                          max_examples=config.max_examples, seed=config.seed)
    return check_trained_on(data, record.dataset.fingerprint, record.name or "", held_out=config.held_out)


def _refuse_training_options(method: Method, options: Mapping[str, Any]) -> None:
    """ConfigError for an adapter or training option: quantizing a merged model trains nothing, so the value
    would change nothing but the record."""
    from kbit.core.model.adapters import adapter_options, training_options

    training = set(adapter_options().names) | set(training_options().names)
    given = [name for name in options if name in training]
    if given:
        own = [name for name in method.info.options.names if name not in training]
        raise ConfigError(f"-o {given[0]} sets how method '{method.name}' trains an adapter, and kbit quantize trains "
                          f"none; pass only its quantization options ({', '.join(own) or 'it has none'}), or "
                          "kbit train to train with it")


@attrs.frozen
class QuantizePlan:
    """What ``kbit quantize`` will do, decided and checked before anything is written."""

    method: Method
    spec: QuantizationSpec
    source: Path  # the run or model directory named on the command line
    model_dir: Path  # the full-precision model quantized: a run's merged/, else ``source``
    target: Path  # the claimed output folder
    data: Any  # TaskData: the calibration examples
    run: RunRecord | None  # the run's record when ``source`` is a run
    into_run: bool  # the output is the run's own quantized/ (recorded in the run) rather than a folder of its own


def quantize_path(path: Path, method_name: str | None, options: Mapping[str, Any], output: Path | None,
                  dataset: str | None = None, overwrite: bool = False) -> tuple[Path, RunRecord]:
    """``kbit quantize``: quantize a run's merged model (into run/quantized, recorded in the run's record)
    or a plain model directory (into ``output``, with a record of kind "quantized").

    Returns the output directory and the record that describes it (the run's, or the new folder's).
    """
    from kbit.core.model.sources import ModelSource, load_tokenizer

    plan = plan_quantize(Path(path), method_name, options, output, dataset, overwrite)
    tokenizer = load_tokenizer(ModelSource(path=str(plan.model_dir), name=plan.model_dir.name, origin="local"))
    calibration = calibration_texts(tokenizer, plan.data.train, plan.spec, plan.method)
    if not plan.into_run:
        free = is_free(plan.target)  # a folder of its own: what appears there meanwhile is kept, not replaced
        with RunFolder(plan.source, flag=None) if plan.run is not None else contextlib.nullcontext():
            quantize_into(plan.method, plan.spec, plan.model_dir, calibration, plan.target,
                          metadata=lambda result: _quantized_record(plan, result), exclusive=free)
        return plan.target, read_record(plan.target)
    with RunFolder(plan.source, flag=None) as folder:
        record = folder.read_record()  # as it is now that no other writer can change it
        if record.quantize is not None:
            log.info("replacing %s (quantized with %s before) with %s's model", plan.target, record.quantize.method,
                     plan.method.name)
        if record.metrics.variants.pop("quantized", None) is not None:  # measured on the model this replaces
            log.info("the run's score of quantized/ was the old model's; kbit eval %s --variant quantized scores "
                     "this one", plan.source)
        record.quantize = {**quantize_into(plan.method, plan.spec, plan.model_dir, calibration, plan.target),
                           "dataset": plan.data.describe()}
        record.artifacts["quantized"] = "quantized"
        write_cards(plan.source, record)
        write_record(plan.source, record)
        return plan.target, record


def plan_quantize(path: Path, method_name: str | None, options: Mapping[str, Any], output: Path | None,
                  dataset: str | None = None, overwrite: bool = False) -> QuantizePlan:
    """Check the input, choose the method, spec, model, output and calibration data; ConfigError names what is wrong."""
    from kbit.core.data import load_task_data
    from kbit.core.methods.registry import get_method
    from kbit.core.model.check import load_config

    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; pass a kbit run or a Hugging Face model directory")
    record = read_record(path)
    run = record if record is not None and record.kind == "run" else None
    name = method_name or (record.method if record is not None else None)
    if not name:
        raise ConfigError("pass --method (e.g. --method gptq); see 'kbit methods' for those that quantize after training")
    method = get_method(name)
    method.check_requirements()
    if not method.implements("quantize_model"):
        raise ConfigError(f"method '{method.name}' does not quantize after training; choose one whose capabilities "
                          "list post-training quantization (see 'kbit methods')")
    _refuse_training_options(method, options)
    same = run is not None and not options and method.name == run.method and run.spec is not None
    # Options given for the run's own method adjust the options it trained with; another method starts from its defaults.
    recorded = dict(run.method_options) if run is not None and method.name == run.method else {}
    spec = run.spec if same else method.resolve_spec({**recorded, **options})
    if run is not None:
        model_dir = path / "merged"
        if not (model_dir / "config.json").is_file():
            raise ConfigError(run.why_no_merged(path, "quantize"))
        target = Path(output) if output else path / "quantized"
        data = load_task_data(dataset) if dataset else run_examples(run)
    else:
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is neither a kbit run (kbit.json) nor a model directory (config.json)")
        if output is None:
            raise ConfigError("pass --output DIR for the quantized model of a plain model directory")
        model_dir, target = path, Path(output)
        data = load_task_data(dataset or "arith")
    own_artifact = (path / "quantized").resolve() if run is not None else None
    target = claim(target, overwrite=overwrite, what="quantized model", kind="quantized",
                   is_own=lambda p: p == own_artifact or (kbit_kind(p) == "quantized" and enclosing_run(p) is None),
                   inputs=(path, model_dir, dataset, *(run.made_from() if run is not None else ())),
                   home=path if target.resolve() == own_artifact else None)
    spec = method.resolve_for_model(spec, load_config(str(model_dir)))
    return QuantizePlan(method, spec, path, model_dir, target, data, run, into_run=target == own_artifact)


def _quantized_record(plan: QuantizePlan, result: dict[str, Any]) -> RunRecord:
    """The record of a quantized model's own folder."""
    from kbit.core.model.sources import weights_digest

    method = plan.method
    return RunRecord(
        kind="quantized", status="finished", created=meta.now(), name=plan.target.name, method=method.name,
        method_plugin=method.provenance(), method_summary=method.info.summary, spec=plan.spec,
        base_model={"path": str(plan.model_dir.resolve()), "name": plan.model_dir.name, "origin": "local",
                    "revision": weights_digest(plan.model_dir)},
        source_run=str(plan.source.resolve()) if plan.run is not None else None,
        quantize={**result, "dataset": plan.data.describe()}, versions=meta.package_versions(),
        artifacts={"model": "."},
    )
