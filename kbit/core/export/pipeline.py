"""``kbit export``: write a run's merged model (or any model) as a GGUF file, check it, record it.

Input is a kbit run (its ``merged/`` model; the file goes to ``RUN/gguf/<name>-<type>.gguf`` and is
recorded under ``"exports"`` in the run's ``kbit.json``) or a model reference (directory, ``.gguf``,
hub id or ``default``; ``--output`` required). The file is written to a temporary sibling, checked
(:mod:`kbit.core.export.check`) and renamed into place only if the check passes.

Ownership: a run's ``gguf/`` folder is this command's output; a file there that the run's
``"exports"`` does not list is no command's output and is refused, ``--overwrite`` or not (kbit's
output rule, :mod:`kbit.core.runs.outputs`). Outside kbit's outputs an existing file is replaced only with
``--overwrite``; a target inside another kbit output (another run, ``adapter/``, ``merged/``,
``quantized/``, a run's root, a report) is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.runs.record import RunRecord, read_record, write_record
from kbit.core.runs.sections import Export
from kbit.core.errors import ConfigError
from kbit.core.export.check import GATES, Gate, Reference, check_file, check_gguf, resolve_runtime
from kbit.core.export.gguf import BaseModel, check_file_type, write_gguf
from kbit.core.runs.folder import RunFolder, atomic_file
from kbit.core.runs.outputs import enclosing_run

FORMATS = ("gguf",)
EXPORTS_DIR = "gguf"
DEFAULT_TYPE = "q8_0"


@attrs.frozen
class ExportResult:
    target: Path
    entry: dict[str, Any]


@attrs.frozen
class _Plan:
    source_dir: Path
    name: str
    base: BaseModel
    data: Any
    target: Path
    run: Path | None
    record: RunRecord | None


def export_path(path: str, *, format: str = "gguf", file_type: str | None = None, output: str | None = None,
                overwrite: bool = False, limit: int | None = None, min_top1: float | None = None,
                max_em_drop: float | None = None, max_kl: float | None = None, max_new_tokens: int = 16, runtime: str = "auto") -> ExportResult:
    """Export ``path`` (a run or a model reference) as one checked GGUF file; see the module docs.

    ``file_type`` None: the type the run's merge policy names as its deploy format (``export``), else q8_0.
    ``runtime``: where the file is checked (:func:`kbit.core.export.check.resolve_runtime`).
    """
    runtime = resolve_runtime(runtime)
    if format not in FORMATS:
        raise ConfigError(f"unknown --format '{format}'; kbit exports {', '.join(FORMATS)}")
    deploy_type, head_type = _deploy_type(path)
    file_type = check_file_type(file_type or deploy_type or DEFAULT_TYPE)
    for label, value in (("--min-top1", min_top1), ("--max-em-drop", max_em_drop)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{label} {value} is outside [0, 1]; pass a fraction such as 0.95")
    if max_kl is not None and not 0 <= max_kl < float("inf"):
        raise ConfigError(f"--max-kl {max_kl} must be a finite number of nats ≥ 0, such as 0.01")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit} must be at least 1: every export is checked")
    plan = _plan(path, file_type, output)
    if plan.run is not None and not os.access(plan.run, os.W_OK):  # a read-only mount, an archive's copy
        raise ConfigError(f"run {plan.run} cannot be written, and an export is recorded in the run; export its merged "
                          f"model on its own instead: kbit export {plan.run / 'merged'} --output FILE.gguf")
    _check_target(plan, overwrite)
    gate = Gate.for_type(file_type, max_kl, max_em_drop, min_top1)
    items = plan.data.held_out[: limit or _default_limit(plan.record)]
    with RunFolder(plan.run, flag=None) if plan.run else contextlib.nullcontext() as folder:
        if folder is not None:  # the run may have changed before the lock was ours: check the target against it again
            plan = attrs.evolve(plan, record=folder.read_record())
            _check_target(plan, overwrite)
            if plan.target.exists() and _recorded(plan.record, plan):
                logging.getLogger("kbit").info("replacing %s, exported before: written and checked again", plan.target)
        return _write_checked(plan, format, file_type, gate, items, max_new_tokens, head_type, runtime=runtime)


def export_in_run(run: Path, record: RunRecord, file_type: str, reference: Reference, *, min_top1: float,
                  max_new_tokens: int = 16, limit: int | None = None, head_type: str = "q8_0") -> ExportResult:
    """Export a run's merged model while ``kbit train`` holds the run's lock: the method's own deploy
    format (``MergePolicy.export``), checked in the runtime (llama.cpp where installed) against
    ``reference``, the trained adapter model, as strictly as the merge (``min_top1``). The entry goes
    into ``record`` (the run's record in memory), which is also written."""
    from kbit.core.quantize import run_examples

    name = _run_name(record, run)
    plan = _Plan(run / "merged", name, _run_base(record), run_examples(record),
                 run / EXPORTS_DIR / f"{name}-{file_type}.gguf", run, record)
    _check_target(plan, overwrite=False)
    # The file reproduces the trained model itself (prequantized codes): exact match may not drop either.
    gate = Gate.for_type(file_type, max_em_drop=GATES[file_type][1] or 0.02, min_top1=min_top1)
    return _write_checked(plan, "gguf", file_type, gate, plan.data.held_out[: limit or _default_limit(record)],
                          max_new_tokens, head_type, reference=reference)


def export_adapter_in_run(run: Path, record: RunRecord, reference: Reference, *, min_top1: float,
                          max_new_tokens: int = 16, limit: int | None = None, runtime: str = "auto") -> ExportResult:
    """Write the run's adapter as a llama.cpp LoRA GGUF (``RUN/gguf/NAME-lora.gguf``) over the base's own
    GGUF file (``MergePolicy.adapter_gguf``), check it applied to that unchanged file in llama.cpp
    against ``reference`` (the trained adapter model), and record it. Needs a base read from a GGUF file."""
    from kbit.core.export.lora_gguf import write_lora_gguf
    from kbit.core.quantize import run_examples

    name = _run_name(record, run)
    base = _run_base(record)
    if base.gguf is None:
        raise ConfigError(f"run {run}'s base was not read from a GGUF file; a LoRA GGUF applies to the base file it was "
                          "trained on — export the merged model instead (kbit export RUN)")
    plan = _Plan(run / "adapter", name, base, run_examples(record), run / EXPORTS_DIR / f"{name}-lora.gguf", run, record)
    _check_target(plan, overwrite=False)
    items = plan.data.held_out[: limit or _default_limit(record)]
    gate = Gate.for_type("q8_0", min_top1=min_top1)
    started = time.time()
    exclusive = not plan.target.exists()  # a file that appears meanwhile is kept, never replaced
    with _folder_for(plan.target), atomic_file(plan.target, exclusive) as temp:  # renamed into place only once checked
        written = write_lora_gguf(run / "adapter", base.gguf, temp, name=f"{name}-lora", base_model=base)
        write_seconds = round(time.time() - started, 1)
        figures = check_file(base.gguf, reference, plan.data.task, items, gate, max_new_tokens, lora=temp,
                             runtime=runtime)
        entry = {"file": _file_key(plan), "format": "gguf", "type": "lora", "base_file": str(base.gguf),
                 "size_bytes": temp.stat().st_size, "created": meta.now(), "dataset": plan.data.describe(),
                 "write_seconds": write_seconds, **written, **figures,
                 "source": {"model": "the trained adapter model", **figures["source"]}}
        _record(plan, entry)
    _write_cards(plan)
    return ExportResult(plan.target, entry)


def _write_checked(plan: _Plan, format: str, file_type: str, gate: Gate, items: Any, max_new_tokens: int,
                   head_type: str = "q8_0", *, reference: Reference | None = None, runtime: str = "auto") -> ExportResult:
    """Write the file to a temporary sibling, check it (against ``reference``, else the source folder),
    record it in the run, rename it into place (see the module docs and ``_record``)."""
    started = time.time()
    exclusive = not plan.target.exists()  # a file another command or the user writes there meanwhile is kept
    with _folder_for(plan.target), atomic_file(plan.target, exclusive) as temp:
        written = write_gguf(plan.source_dir, temp, file_type, name=plan.name, base=plan.base,
                             datasets=_hub_datasets(plan.record), head_type=head_type)
        write_seconds = round(time.time() - started, 1)
        if reference is None:
            described = _source_reference(plan, items, max_new_tokens)
            figures = check_gguf(temp, plan.source_dir, plan.data.task, items, gate, max_new_tokens,
                                 source_exact_match=_earlier_source_em(plan.record, described), runtime=runtime)
            source = str(plan.source_dir.relative_to(plan.run)) if plan.run else str(plan.source_dir)
        else:
            described = {}
            figures = check_file(temp, reference, plan.data.task, items, gate, max_new_tokens, runtime=runtime)
            source = "the trained adapter model"
        entry = {
            "file": _file_key(plan), "format": format, "type": file_type, "size_bytes": temp.stat().st_size,
            "created": meta.now(), "dataset": plan.data.describe(), "write_seconds": write_seconds, **written,
            **figures, "source": {"model": source, **figures["source"], **described},
        }
        if plan.run:
            _record(plan, entry)
    if plan.run:
        _write_cards(plan)
    return ExportResult(plan.target, entry)


@contextlib.contextmanager
def _folder_for(target: Path) -> Iterator[None]:
    """Create ``target``'s folder (and missing parents) for the duration; the ones created here are
    removed again if the export fails and leaves them empty, so a refused file leaves nothing behind."""
    created = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                folder.rmdir()
        raise


def _deploy_type(path: str) -> tuple[str | None, str]:
    """The GGUF type (and head type) a run's merge policy names as its method's deploy format, if any."""
    candidate = Path(path).expanduser()
    record = read_record(candidate) if candidate.is_dir() else None
    policy = record.merge_policy if record is not None else None
    return (policy.export, policy.export_head) if policy is not None else (None, "q8_0")


def _plan(path: str, file_type: str, output: str | None) -> _Plan:
    from kbit.core.data import load_task_data
    from kbit.core.model.sources import resolve_model
    from kbit.core.quantize import run_examples

    candidate = Path(path).expanduser()
    record = read_record(candidate) if candidate.is_dir() else None
    if record is not None and record.kind == "run":
        merged = candidate / "merged"
        if not (merged / "config.json").is_file():
            raise ConfigError(record.why_no_merged(candidate, "export"))
        name = _run_name(record, candidate)
        default = candidate / EXPORTS_DIR / f"{name}-{file_type}.gguf"
        target = Path(output).expanduser() if output else default
        return _Plan(merged, name, _run_base(record), run_examples(record), target, candidate, record)
    if record is not None:
        raise ConfigError(f"{candidate} is a kbit {record.kind} directory, not a run; export its run or a model directory")
    _refuse_quantized_checkpoint(candidate)
    if output is None:
        raise ConfigError("pass --output FILE.gguf for the export of a model that is not a kbit run")
    source = resolve_model(path)
    gguf_file = _source_gguf(source.origin, path)
    base = BaseModel(name=source.name, hub_id=source.hub_id, license=source.license, gguf=gguf_file)
    return _Plan(Path(source.path), source.name, base, load_task_data("arith"), Path(output).expanduser(), None, None)


def _refuse_quantized_checkpoint(folder: Path) -> None:
    """ConfigError for a model folder whose config names a quantization (GPTQ/AWQ packed codes, bitsandbytes
    …): the GGUF writer reads float weights, and those tensors have no llama.cpp name."""
    try:
        quant = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return  # not a readable model folder: resolve_model says what it is
    if not quant:
        return
    run = enclosing_run(folder)
    source = f"its run's full-precision model: kbit export {run}" if run is not None else "the full-precision model it was made from"
    kind = quant.get("quant_method", "quantized") if isinstance(quant, dict) else "quantized"
    raise ConfigError(f"{folder} holds a {kind} checkpoint, whose quantized weights kbit export cannot write as GGUF; "
                      f"export {source} (--type picks the GGUF's own quantization)")


def _run_name(record: RunRecord, run: Path) -> str:
    """The run's name, which names its GGUF file in ``gguf/``. ``kbit.json`` is untrusted input: its name
    is checked as ``--name`` is, so it cannot lead the file out of the run."""
    from kbit.core.train.config import check_run_name

    if not record.name:
        return run.resolve().name
    try:
        check_run_name(record.name)
    except ValueError as exc:
        raise ConfigError(f"{meta.FILENAME} of run {run}: {exc}; fix its 'name' field") from None
    return record.name


def _run_base(record: RunRecord) -> BaseModel:
    base = record.base_model
    gguf_file = _source_gguf(str(base.origin), record.config.model if record.config is not None else None)
    return BaseModel(name=base.name or "", hub_id=base.hub_id or "", license=base.license or "", gguf=gguf_file)


def _source_gguf(origin: str, reference: str | None) -> Path | None:
    """The GGUF file a base was converted from (its tokenizer is carried over), or None for other bases."""
    from kbit.core.model.sources import default_gguf_path

    if origin == "default":
        return default_gguf_path()
    if origin == "gguf" and reference and Path(reference).expanduser().is_file():
        return Path(reference).expanduser()
    if origin == "gguf":
        raise ConfigError(f"the run's base was the GGUF file {reference}, which is gone; restore it to export "
                          "(its tokenizer is carried into the export)")
    return None


def _check_target(plan: _Plan, overwrite: bool) -> None:
    """kbit's output rule (:mod:`kbit.core.runs.outputs`): inside a kbit output, only the run's own ``gguf/``
    is this command's; the source model, the run and the base's GGUF are never replaced."""
    from kbit.core.runs.outputs import claim

    target = plan.target
    if target.suffix != ".gguf":
        raise ConfigError(f"--output {target} must end in .gguf")
    if target.is_dir():
        raise ConfigError(f"--output {target} is a directory; name the .gguf file to write")
    own_folder = plan.run is not None and target.parent.resolve() == (plan.run / EXPORTS_DIR).resolve()
    made_from = plan.record.made_from() if plan.record is not None else ()
    claim(target, is_own=lambda real: own_folder and _recorded(plan.record, plan), kind="export",
          overwrite=overwrite, what="GGUF export", inputs=(plan.source_dir, plan.run, plan.base.gguf, *made_from),
          home=plan.run if own_folder else None)


def _file_key(plan: _Plan) -> str:
    """How a run's ``exports`` names the file: relative to the run when inside it, else absolute."""
    target = plan.target.resolve()
    if plan.run is not None and target.is_relative_to(plan.run.resolve()):
        return str(target.relative_to(plan.run.resolve()))
    return str(target)


def _recorded(record: RunRecord | None, plan: _Plan) -> bool:
    if record is None or plan.run is None:
        return False
    return any(e.file == _file_key(plan) for e in record.exports)


def _source_reference(plan: _Plan, items: Any, max_new_tokens: int) -> dict[str, Any]:
    """What the source's exact match depends on: its weights, the items and the generation length."""
    from kbit.core.data.examples import TaskData
    from kbit.core.model.sources import weights_digest

    held_out = TaskData(name=plan.data.name, task=plan.data.task, train=(), held_out=tuple(items))
    return {"weights": weights_digest(plan.source_dir), "items_fingerprint": held_out.fingerprint(),
            "max_new_tokens": max_new_tokens}


def _earlier_source_em(record: RunRecord | None, reference: Mapping[str, Any]) -> float | None:
    """The source's exact match from an earlier export of this run on the same weights and items, if any."""
    for entry in reversed(record.exports if record is not None else []):
        if all(entry.source.get(k) == v for k, v in reference.items()):
            return entry.source.get("exact_match")
    return None


def _default_limit(record: RunRecord | None) -> int:
    limit = record.config.eval_limit if record is not None and record.config is not None else None
    return int(limit) if isinstance(limit, int) and limit > 0 else 100


def _hub_datasets(record: RunRecord | None) -> list[str]:
    source = (record.dataset.source or "") if record is not None else ""
    return [source.removeprefix("hub:")] if source.startswith("hub:") else []


def _record(plan: _Plan, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the run's ``exports`` (replacing an earlier export of the same file) and write the record.

    Called before the checked file is renamed into place: a record that cannot be written (a full disk, a
    read-only ``kbit.json``) fails the export with the file still a temporary one, which is removed, instead
    of leaving a file in ``gguf/`` that the record does not list (which no later export could replace)."""
    record = plan.record  # the run's record as of now: read under the run's lock, or the running train's
    record.exports = [*(e for e in record.exports if e.file != entry["file"]), Export.from_dict(entry)]
    record.artifacts[EXPORTS_DIR] = EXPORTS_DIR
    write_record(plan.run, record)


def _write_cards(plan: _Plan) -> None:
    """Refresh the run's cards once the file is in place (they describe the files in ``gguf/``)."""
    from kbit.core.runs.cards import write_cards

    write_cards(plan.run, plan.record)
