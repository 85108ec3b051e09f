"""What ``kbit eval`` evaluates, and loading each model the way its metadata says.

A target is a run directory (``kbit.json`` + ``adapter/``, ``merged/``, ``quantized/``), a directory
with ``kbit.json`` of kind "quantized", a plain Hugging Face model directory, or a model reference
(``--model``: ``default``, a ``.gguf`` file, a hub id). Each target expands into ``Candidate``s, one
per variant:

- ``base``: the plain model as stored (a run's base is ``kbit.json`` → ``base_model.path``); with
  ``--method`` also the same base loaded through that method's quantization config (``base+METHOD``;
  for a run of that method without ``-o``, with the run's own spec: the model its "before" is scored on);
- ``adapter``: the run's base loaded with its method's quant config, then ``PeftModel`` on top;
- ``merged`` / ``quantized``: the run's merged or post-training-quantized model, loaded plainly.

A ``.gguf`` file is a base candidate that runs in llama.cpp (``--runtime``; ``auto``: when
llama-cpp-python is installed), with ``--lora`` applied there, or in transformers' reader; its
reference is ``--reference MODEL``, else the trained adapter model of the run whose ``gguf/``
folder holds the file (or the ``--lora`` file).

Planning reads only metadata and configs, so bad input fails before any model is loaded. A
variant that was asked for but is not there becomes a ``Gap``, not an error; so does a run's missing
adapter, asked for or not, with why (its status) and what to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.system.device import DeviceInfo, device_map_for
from kbit.core.data.arithmetic import NAME as DEFAULT_DATASET, REPHRASED
from kbit.core.data.split import describe as describe_held_out
from kbit.core.errors import ConfigError, MissingDependencyError, UnknownMethodError
from kbit.core.system.input_files import refuse_special_file
from kbit.core.runs.record import RunRecord, read_record
from kbit.core.model.sources import (ModelSource, check_base_unchanged, check_remote_code, check_weights, conversion_problem,
                                     resolve_model, weights_digest)
from kbit.core.contract.spec import QuantizationSpec

log = logging.getLogger("kbit")

VARIANTS = ("base", "adapter", "merged", "quantized")
# What --variant selects: also "gguf", a run's deploy files (each a candidate run as a GGUF file is)
SELECTABLE = (*VARIANTS, "gguf")
RUNTIMES = ("auto", "llama.cpp", "transformers")
RUNS_ROOT = Path("runs")


@attrs.frozen
class DataRequest:
    """The arguments of ``load_task_data`` that pick a held-out split; equal requests share data. With no
    ``dataset``, ``held_out`` is a file whose every row is scored (``load_items``)."""

    dataset: str | None = "arith"
    columns: str | None = None
    held_out: int | float | str | None = None
    max_examples: int | None = None
    seed: int = 0
    trained_on: tuple[str, str] | None = None  # (run, its recorded fingerprint): the run's own split, checked
    run_split: DataRequest | None = None  # with --dataset on a run: the run's own split, whose training rows it learned

    @property
    def files(self) -> tuple[str | None, ...]:
        """What the request reads: the dataset and the held-out file, where they are files."""
        return self.dataset, self.held_out if isinstance(self.held_out, str) else None


@attrs.frozen
class Candidate:
    """One model to evaluate and how to load it.

    ``method``/``spec`` are set when the model is loaded through a method's quant config (an adapter's
    base, or ``--method`` on a base); ``produced_by`` names the method that made a merged/quantized model.
    """

    label: str
    variant: str = attrs.field(validator=attrs.validators.in_(VARIANTS))
    path: str
    source: str
    tokenizer_path: str
    data: DataRequest
    base_path: str | None = None
    method: str | None = None
    spec: QuantizationSpec | None = attrs.field(default=None, eq=False)
    produced_by: str | None = None
    trust_remote_code: bool = False
    # A GGUF run in llama.cpp (``gguf``, with the LoRA adapter GGUF ``lora``); ``path`` is then the
    # file's converted folder, which gives the tokenizer. ``reference``: the model the GGUF's
    # next-token logits are compared with (kbit.core.measure.agreement), if any.
    runtime: str = "transformers"
    gguf: str | None = None
    lora: str | None = None
    reference: Candidate | None = attrs.field(default=None, eq=False)

    @property
    def display_variant(self) -> str:
        """``base+qlora`` for a base quantized on load, ``gguf@llama.cpp`` for a GGUF file run in llama.cpp
        (a fine-tuned one too: the file is the whole model), ``gguf+lora@llama.cpp`` with an adapter file;
        otherwise the variant itself."""
        shown = f"{self.variant}+{self.method}" if self.variant == "base" and self.method else self.variant
        shown = "gguf" if self.gguf else shown
        shown += "+lora" if self.lora else ""
        return f"{shown}@{self.runtime}" if self.runtime != "transformers" else shown

    def key(self) -> tuple[Any, ...]:
        """Equal for candidates that would measure the same: one base shared by several runs on the same split
        (their data differs only in which run it is checked for) is evaluated once."""
        data = self.data
        if self.variant == "base" and data.trained_on is not None:
            data = attrs.evolve(data, trained_on=("", data.trained_on[1]), run_split=None)
        return (self.path, self.variant, self.method, data, self.runtime, self.lora)


@attrs.frozen
class Gap:
    """A variant that was asked for but could not be evaluated, and why."""

    label: str
    variant: str
    source: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


@attrs.frozen
class Selection:
    """What the user asked for, as far as planning needs it."""

    paths: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    method: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    dataset: str | None = None
    columns: str | None = None
    max_examples: int | None = None
    seed: int | None = None
    held_out: int | float | str | None = None
    trust_remote_code: bool = False
    runtime: str = attrs.field(default="auto", validator=attrs.validators.in_(RUNTIMES))
    lora: str | None = None
    reference: str | None = None


def check_variants(variants: Sequence[str]) -> tuple[str, ...]:
    unknown = [v for v in variants if v not in SELECTABLE]
    if unknown:
        raise ConfigError(f"unknown --variant '{unknown[0]}'; choose from {', '.join(SELECTABLE)}")
    return tuple(dict.fromkeys(variants))


def latest_run(root: Path = RUNS_ROOT) -> Path:
    """The run under ``root`` whose ``kbit.json`` was written last."""
    found = [p for p in Path(root).glob(f"*/{meta.FILENAME}") if p.is_file()]
    if not found:
        raise ConfigError(f"no runs under ./{root} (no */{meta.FILENAME}); pass a run directory or --model MODEL")
    return max(found, key=lambda p: p.stat().st_mtime).parent


def plan_candidates(selection: Selection, device: DeviceInfo) -> tuple[list[Candidate], list[Gap]]:
    """Expand the selection into candidates (deduplicated, in order) and gaps; reads no weights."""
    explicit = bool(selection.variants)
    wanted = selection.variants or SELECTABLE
    paths = list(selection.paths)
    if not paths and not selection.models:
        paths = [str(latest_run())]
    method_spec = _method_spec(selection, device) if selection.method else None
    candidates: list[Candidate] = []
    gaps: list[Gap] = []
    given = {}  # each model or run given, by where it is: one given twice is evaluated once
    for raw in [*paths, *selection.models]:
        given.setdefault(Path(raw).expanduser().resolve(), []).append(raw)
    for names in given.values():
        if len(names) > 1:
            log.warning("%s is given %d times; it is evaluated once", names[0], len(names))
    for raw in paths:
        found, missing = _plan_path(Path(raw).expanduser(), selection, wanted, explicit, method_spec)
        candidates += found
        gaps += missing
    for reference in selection.models:
        if reference.endswith(".gguf") and Path(reference).expanduser().is_file():
            candidates += _plan_gguf(Path(reference).expanduser(), selection, wanted, method_spec)
            continue
        source = resolve_model(reference, trust_remote_code=selection.trust_remote_code)
        data = _data_request(selection, None)
        if "base" in wanted:
            candidates += _base_candidates(source.name, source.path, reference, data, selection.trust_remote_code, method_spec)
        elif explicit:
            gaps += [Gap(source.name, v, reference, "a plain model has only the base variant") for v in wanted]
    if selection.lora and not any(c.lora for c in candidates):
        raise ConfigError("--lora applies to a base .gguf file run in llama.cpp; pass the base file too: kbit eval BASE.gguf --lora ADAPTER.gguf")
    if selection.reference and not any(c.reference for c in candidates):
        raise ConfigError("--reference applies to .gguf files: kbit eval FILE.gguf --reference MODEL")
    seen: set[tuple[Any, ...]] = set()
    unique = [c for c in candidates if not (c.key() in seen or seen.add(c.key()))]
    # runs named alike (same model, data and method, other settings) are told apart by the folder given
    sources: dict[str, set[str]] = {}
    for candidate in unique:
        sources.setdefault(candidate.label, set()).add(candidate.source)
    unique = [attrs.evolve(c, label=f"{c.label} ({c.source})") if len(sources[c.label]) > 1 else c for c in unique]
    if not unique:
        detail = "; ".join(f"{g.label} {g.variant}: {g.reason}" for g in gaps) or "no variant selected"
        raise ConfigError(f"nothing to evaluate ({detail})")
    return unique, gaps


def _method_spec(selection: Selection, device: DeviceInfo) -> tuple[str, QuantizationSpec]:
    from kbit.core.methods.registry import get_method

    method = get_method(selection.method)
    method.check_requirements(device)
    return method.name, method.resolve_spec(selection.options, device)


def _plan_path(path: Path, selection: Selection, wanted: Sequence[str], explicit: bool,
               method_spec: tuple[str, QuantizationSpec] | None) -> tuple[list[Candidate], list[Gap]]:
    refuse_special_file(path, "input")
    if path.is_file() and path.suffix == ".gguf":
        return _plan_gguf(path, selection, wanted, method_spec), []
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a kbit run, a model directory or a .gguf file; pass one of those (a "
                          "dataset file goes to --dataset or --held-out)")
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist; pass a kbit run directory or a model directory")
    record = read_record(path)
    if record is None:
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is neither a kbit run (no {meta.FILENAME}) nor a model directory (no config.json)")
        check_remote_code(path, selection.trust_remote_code)  # else a built-in class would stand in for its code
        data = _data_request(selection, None)
        if "base" not in wanted:
            gaps = [Gap(path.name, v, str(path), "a plain model directory has only the base variant") for v in wanted] if explicit else []
            return [], gaps
        return _base_candidates(path.resolve().name, str(path.resolve()), str(path), data, selection.trust_remote_code, method_spec), []
    if record.kind == "quantized":
        return _plan_quantized_dir(path, record, selection, wanted, explicit)
    return _plan_run(path, record, selection, wanted, explicit, method_spec)


def _plan_gguf(path: Path, selection: Selection, wanted: Sequence[str],
               method_spec: tuple[str, QuantizationSpec] | None) -> list[Candidate]:
    """A GGUF file as a base candidate run in ``gguf_runtime(selection)``, with its reference model.
    A LoRA adapter GGUF of a run (``RUN/gguf/NAME-lora.gguf``) given as the file runs on the base file
    the run recorded for it, as ``BASE.gguf --lora FILE`` would."""
    base = None if selection.lora else _recorded_adapter_base(path)
    if base is not None:
        path, selection = base, attrs.evolve(selection, lora=str(path))
    lora = _lora_file(selection.lora)
    # A file kbit exported into RUN/gguf/ (an adapter's file first) is scored on its run's held-out split.
    run = _owner_run(lora or path)
    source = _exported_from(path, run, selection) or resolve_model(str(path))
    data = _data_request(selection, run[1] if run else None)
    if "base" not in wanted:
        return []
    found = _base_candidates(source.name, source.path, str(path), data, selection.trust_remote_code, method_spec)
    reference = _reference(selection, run)
    if gguf_runtime(selection) == "transformers":
        return [attrs.evolve(found[0], reference=reference), *found[1:]]
    if lora is not None:
        _check_adapter_file(lora)
        from kbit.core.export.lora_gguf import check_lora_for_base

        check_lora_for_base(lora, path)
    in_llama_cpp = attrs.evolve(found[0], runtime="llama.cpp", gguf=str(path), lora=str(lora) if lora else None,
                                reference=reference, label=lora.stem if lora else found[0].label)  # named by the adapter
    return [in_llama_cpp, *found[1:]]


def _exported_from(file: Path, run: tuple[Path, RunRecord] | None, selection: Selection) -> ModelSource | None:
    """For a run's own deploy file run in llama.cpp, the run's merged model as the source of its tokenizer and
    config: kbit's export check proved the file encodes the held-out texts as that tokenizer does, where a
    conversion by transformers' GGUF reader may not (its phi3 reader drops spaces llama.cpp keeps). None
    otherwise: the file is converted."""
    if run is None or file.parent != run[0] / "gguf" or gguf_runtime(selection) != "llama.cpp":
        return None
    merged = run[0] / "merged"
    return ModelSource(path=str(merged), name=file.stem, origin="local") if (merged / "config.json").is_file() else None


def _recorded_adapter_base(file: Path) -> Path | None:
    """The base file a run recorded for its LoRA GGUF ``file`` (its ``exports`` entry's ``base_file``), or
    None when ``file`` is not a run's LoRA export. Read from the run's record: parsing the GGUF header
    would read a model file's whole vocabulary on every ``kbit eval FILE.gguf``."""
    run = _owner_run(file)
    entries = [e for e in (run[1].exports if run else []) if e.type == "lora" and Path(str(e.file)).name == file.name]
    if not entries:
        return None
    base = Path(entries[-1].base_file or "")
    if not base.is_file():
        raise ConfigError(f"{file} is a LoRA adapter GGUF whose base file {base} is gone; pass the model file it "
                          f"applies to and --lora {file}")
    return base


def gguf_runtime(selection: Selection) -> str:
    """Where a GGUF file runs: ``--runtime``, where ``auto`` is llama.cpp when llama-cpp-python is installed."""
    from kbit.core.runtime.llama_cpp import INSTALL, installed

    if selection.runtime == "transformers":
        if selection.lora:
            raise ConfigError("--lora needs llama.cpp; drop --runtime transformers (or pass --runtime llama.cpp)")
        return "transformers"
    if installed():
        return "llama.cpp"
    if selection.runtime == "llama.cpp" or selection.lora:
        asked = "--runtime llama.cpp" if selection.runtime == "llama.cpp" else "--lora"
        raise MissingDependencyError(f"{asked} runs the file in llama.cpp, which needs llama-cpp-python: {INSTALL}")
    return "transformers"


def _lora_file(lora: str | None) -> Path | None:
    if not lora:
        return None
    path = Path(lora).expanduser()
    refuse_special_file(path, "--lora")
    if not path.exists():
        raise ConfigError(f"--lora {lora} does not exist; pass a llama.cpp LoRA adapter GGUF")
    if not path.is_file() or path.suffix != ".gguf":
        raise ConfigError(f"--lora {lora} is not a .gguf file; pass a llama.cpp LoRA adapter GGUF")
    return path


def _check_adapter_file(path: Path) -> None:
    """Refuse a ``--lora`` file that is no LoRA adapter GGUF: llama.cpp reads a model file given as an adapter
    without a check and crashes the process (seen: SIGSEGV)."""
    from gguf import GGUFReader

    lora = str(path)
    try:
        field = GGUFReader(lora).fields.get("general.type")
    except Exception:  # noqa: BLE001 - gguf-py raises several kinds on a file that is not GGUF
        raise ConfigError(f"--lora {lora} cannot be read as GGUF (damaged or not a GGUF file); pass a llama.cpp LoRA "
                          "adapter GGUF") from None
    kind = field.contents() if field is not None else None
    if kind != "adapter":
        raise ConfigError(f"--lora {lora} is a GGUF {kind or 'model'} file, not a LoRA adapter; pass a model file as "
                          "the model, and as --lora the adapter GGUF made for it (a gguf run writes RUN/gguf/NAME-lora.gguf)")


def _owner_run(file: Path) -> tuple[Path, RunRecord] | None:
    """The run whose gguf/ folder holds ``file``, if any."""
    if file.parent.name != "gguf":
        return None
    record = read_record(file.parent.parent)
    return (file.parent.parent, record) if record is not None and record.kind == "run" else None


def _reference(selection: Selection, run: tuple[Path, RunRecord] | None) -> Candidate | None:
    """What a GGUF's logits are compared with: ``--reference MODEL``, else the trained adapter model of
    the run whose file it is, else nothing."""
    if selection.reference:
        source = resolve_model(selection.reference, trust_remote_code=selection.trust_remote_code)
        data = _data_request(selection, run[1] if run else None)
        return _base_candidates(source.name, source.path, selection.reference, data, selection.trust_remote_code, None)[0]
    if run is None:
        return None
    found, _ = _plan_run(run[0], run[1], selection, ("adapter",), False, None)
    return found[0] if found else None


_WARNED_PLUGIN_CHANGE: set[tuple[Path, str]] = set()


def run_method(run: Path, record: RunRecord) -> Any:
    """The method ``record`` trained with, as installed here. UnknownMethodError naming the distribution the run
    recorded when no installed plugin provides it; a warning when the installed one is another version (its
    ``quantize_base`` may build another base than the adapter trained on), or the same version whose source
    files differ from those the run recorded."""
    from kbit.core.methods.registry import get_method

    plugin = record.method_plugin
    provider = " ".join(str(plugin[key]) for key in ("distribution", "version") if plugin.get(key))
    try:
        method = get_method(record.method)
    except UnknownMethodError:
        if not plugin.get("distribution"):
            raise
        import importlib.metadata

        try:
            installed = importlib.metadata.version(plugin["distribution"])
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is not None and installed == plugin.get("version"):
            raise  # the very distribution the run used has no such method: the name itself is wrong
        pin = f"{plugin['distribution']}=={plugin['version']}" if plugin.get("version") else plugin["distribution"]
        here = "not installed here" if installed is None else f"not in the {installed} installed here"
        raise UnknownMethodError(f"run {run} trained its adapter with method '{record.method}' of {provider}, which is "
                                 f"{here}; pip install '{pin}' to score the adapter (merged/ needs no method)") from None
    if (run, record.method) in _WARNED_PLUGIN_CHANGE:  # planned again as a GGUF's reference: said once
        return method
    _WARNED_PLUGIN_CHANGE.add((run, record.method))
    if plugin.get("version") and (plugin.get("distribution"), plugin["version"]) != (method.distribution, method.version):
        log.warning("run %s trained with method '%s' of %s; %s %s is installed, whose base may differ from the one "
                    "the adapter trained on", run, record.method, provider, method.distribution, method.version)
    elif plugin.get("sources") and plugin["sources"] != method.provenance().get("sources"):
        log.warning("run %s trained with method '%s' of %s, whose source files have changed since under the same "
                    "version, so its base may differ from the one the adapter trained on; give the plugin a new "
                    "version when a change alters its base", run, record.method, provider)
    return method


def _plan_run(run: Path, record: RunRecord, selection: Selection, wanted: Sequence[str], explicit: bool,
              method_spec: tuple[str, QuantizationSpec] | None) -> tuple[list[Candidate], list[Gap]]:
    label = record.name or run.name
    data = _data_request(selection, record)
    # Model code runs only when the user allows it on this invocation, whatever the run recorded.
    trust = selection.trust_remote_code
    candidates: list[Candidate] = []
    gaps: list[Gap] = []
    base_path: str | None = None
    if "base" in wanted or "adapter" in wanted:
        base_path = _run_base_path(run, record)
        check_remote_code(Path(base_path), trust)
    if "base" in wanted:
        base = record.base_model
        if method_spec is not None and method_spec[0] == record.method and not selection.options and record.spec:
            method_spec = (record.method, record.spec)  # the base exactly as the run trained on it
        candidates += _base_candidates(base.name or Path(base_path).name, base_path, str(run), data, trust, method_spec)
    for variant in ("adapter", "merged", "quantized"):
        if variant not in wanted:
            continue
        directory = _artifact_dir(run, record, variant)
        marker = "adapter_config.json" if variant == "adapter" else "config.json"
        if directory is None or not (directory / marker).is_file():
            if variant == "adapter":  # every run trains one: its absence is news, asked for or not
                gaps.append(Gap(label, variant, str(run), _no_adapter(run, record)))
            elif explicit:
                status = record.status
                gaps.append(Gap(label, variant, str(run), f"the run has no {variant}/ artifact (run status: {status})"))
            continue
        tokenizer = str(directory) if (directory / "tokenizer_config.json").is_file() else (base_path or _run_base_path(run, record))
        check_weights(directory)
        check_remote_code(directory, trust)
        if variant == "adapter":
            try:
                method = run_method(run, record)
            except UnknownMethodError as exc:
                if explicit:
                    raise ConfigError(str(exc)) from None
                gaps.append(Gap(label, variant, str(run), str(exc)))  # the other variants need no method
                continue
            if record.spec is None:
                raise ConfigError(f"{run / meta.FILENAME} has no 'spec'; it is incomplete")
            spec = record.spec
            candidates.append(run_adapter(label, run, base_path, data, trust, method.name, spec, directory=directory))
        else:
            produced = record.method if variant == "merged" else _quantized_method(directory, record)
            candidates.append(Candidate(label, variant, str(directory), str(run), tokenizer, data,
                                        produced_by=produced, trust_remote_code=trust))
    if "gguf" in wanted:
        files = run_gguf_files(run, record)
        if not files and explicit:
            gaps.append(Gap(label, "gguf", str(run), f"the run has no GGUF file; kbit export {run} writes one"))
        for file in files:  # each as `kbit eval FILE` runs it: against the run's adapter model, on its split
            try:
                candidates += _plan_gguf(file, selection, ("base",), None)
            except (ConfigError, MissingDependencyError) as exc:  # the run's other variants are still scored
                gaps.append(Gap(label, "gguf", str(file), str(exc)))
    return candidates, gaps


def run_gguf_files(run: Path, record: RunRecord) -> list[Path]:
    """The deploy files a run's record lists that are in its gguf/ folder (a LoRA GGUF runs on its base file)."""
    files = [run / "gguf" / Path(entry.file).name for entry in record.exports if entry.file]
    return [file for file in dict.fromkeys(files) if file.is_file()]


def _no_adapter(run: Path, record: RunRecord) -> str:
    """Why a run has no adapter to evaluate, from its status, and what to do about it."""
    resume = f"continue it with kbit train --resume {run}"
    if record.status == "finished":
        return "the run has no adapter/ artifact: it finished, so adapter/ was moved or deleted since; restore it"
    if record.status == "failed":
        error = (record.error or "no error recorded").splitlines()[0][:200]
        return f"the run has no adapter/ artifact: it failed before saving one ({error}); fix the cause and {resume}"
    stopped = "it was interrupted" if record.status == "interrupted" else "it is still training, or was stopped"
    return f"the run has no adapter/ artifact yet: {stopped} before training finished (status {record.status}); {resume}"


def _plan_quantized_dir(path: Path, record: RunRecord, selection: Selection, wanted: Sequence[str],
                        explicit: bool) -> tuple[list[Candidate], list[Gap]]:
    label = record.name or path.name
    if "quantized" not in wanted:
        return [], ([Gap(label, v, str(path), "a quantized model directory has only the quantized variant") for v in wanted] if explicit else [])
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} has a {meta.FILENAME} of kind 'quantized' but no config.json; rerun the quantize step")
    check_weights(path)
    check_remote_code(path, selection.trust_remote_code)
    # quantized from a run's merged model (kbit quantize RUN --output DIR): scored on that run's split, as in the run
    source = read_record(Path(record.source_run)) if record.source_run and Path(record.source_run).is_dir() else None
    split_of = source if source is not None and source.kind == "run" and source.config is not None else record
    return [Candidate(label, "quantized", str(path), str(path), str(path), _data_request(selection, split_of),
                      produced_by=record.method or None, trust_remote_code=selection.trust_remote_code)], []


def _base_candidates(label: str, path: str, source: str, data: DataRequest, trust: bool,
                     method_spec: tuple[str, QuantizationSpec] | None) -> list[Candidate]:
    found = [Candidate(label, "base", path, source, path, data, trust_remote_code=trust)]
    if method_spec is not None:
        found.append(method_base(label, path, source, data, trust, *method_spec))
    return found


def method_base(label: str, path: str, source: str, data: DataRequest, trust: bool, method: str,
                spec: QuantizationSpec) -> Candidate:
    """The base at ``path`` loaded through ``method`` with ``spec`` (``base+METHOD``): a run's "before" is
    this candidate of its own method and spec, loaded and scored as ``kbit eval`` does."""
    return Candidate(label, "base", path, source, path, data, base_path=path, method=method, spec=spec,
                     trust_remote_code=trust)


def run_adapter(label: str, run: Path, base_path: str, data: DataRequest, trust: bool, method: str,
                spec: QuantizationSpec, directory: Path | None = None) -> Candidate:
    """The adapter in ``directory`` (default ``run/adapter``) on the base at ``base_path`` through ``method`` with
    ``spec``: the candidate ``kbit eval RUN --variant adapter`` loads, and a run's own "after" figure."""
    directory = directory or run / "adapter"
    tokenizer = str(directory) if (directory / "tokenizer_config.json").is_file() else base_path
    return Candidate(label, "adapter", str(directory), str(run), tokenizer, data, base_path=base_path, method=method,
                     spec=spec, trust_remote_code=trust)


def _run_base_path(run: Path, record: RunRecord) -> str:
    base = record.base_model
    if not base.path:
        raise ConfigError(f"{run / meta.FILENAME} has no base_model.path; it is incomplete")
    path = Path(base.path)
    converted = base.origin in ("default", "gguf")
    if (path / "config.json").is_file() and not (converted and conversion_problem(path)):
        if base.origin == "local":  # a folder of the user's, which can change; a cached conversion or download is kbit's
            check_base_unchanged(base, weights_digest(path), str(run),
                                 "its adapter would be scored on weights it never trained on: restore the base, or "
                                 "evaluate the merged model only (--variant merged)")
        return str(path)
    if base.origin in ("default", "gguf", "hub"):
        # A cached conversion or download that is gone or damaged: resolve the recorded reference again.
        reference = record.config.model if base.origin != "default" and record.config is not None else None
        return resolve_model(reference).path
    raise ConfigError(f"base model {path} of run {run} is missing; restore it or evaluate the merged model only (--variant merged)")


def _artifact_dir(run: Path, record: RunRecord, variant: str) -> Path | None:
    recorded = record.artifacts.get(variant)
    if isinstance(recorded, Mapping):
        recorded = recorded.get("path")
    directory = run / (recorded if isinstance(recorded, str) and recorded else variant)
    if not directory.resolve().is_relative_to(run.resolve()):  # kbit.json is untrusted input, as export reads names
        raise ConfigError(f"{run / meta.FILENAME}: artifacts.{variant} ({recorded}) points outside the run; a run's "
                          f"models are folders inside it: fix that field")
    return directory if directory.is_dir() else None


def _quantized_method(directory: Path, record: RunRecord) -> str | None:
    inner = read_record(directory)
    if inner is not None and inner.method:
        return inner.method
    return record.quantize.method if record.quantize is not None and record.quantize.method else None


def _data_request(selection: Selection, record: RunRecord | None) -> DataRequest:
    """The held-out split to score on: ``--dataset`` split by ``--held-out``, else the run's own split.

    A run is scored on the split it was trained beside; a ``--held-out`` size would cut another one that
    overlaps its training data, so it is refused without ``--dataset``. A ``--held-out`` file is scored
    beside the run's training rows, with a warning for items the run trained on.
    """
    config = record.config if record is not None else None
    seed = selection.seed if selection.seed is not None else (config.seed if config is not None else 0)
    if selection.dataset:
        return DataRequest(selection.dataset, selection.columns, selection.held_out, selection.max_examples, seed,
                           run_split=_run_split(record, config.seed) if config is not None else None)
    if record is None:
        if isinstance(selection.held_out, str):
            return DataRequest(None, selection.columns, selection.held_out, seed=seed)
        return DataRequest(DEFAULT_DATASET, selection.columns, selection.held_out, selection.max_examples, seed)
    recorded = config.held_out if config is not None else None
    if isinstance(selection.held_out, str) and not _same_file(selection.held_out, recorded):
        return _held_out_file_request(selection.held_out, record, seed, selection.columns)
    if selection.held_out is not None and not isinstance(selection.held_out, str) and selection.held_out != recorded:
        raise ConfigError(f"--held-out applies to --dataset: run {record.name or ''} is scored on its own held-out "
                          f"split ({describe_held_out(recorded)}), which its training never saw; pass --dataset too, "
                          "or --limit to score fewer items")
    if config is None:  # a record without settings (kbit 0.1's): the built-in dataset's default split
        name = record.dataset.name or DEFAULT_DATASET
        if name not in (DEFAULT_DATASET, REPHRASED):
            raise ConfigError(f"run {record.name or ''} has no recorded settings in its kbit.json, so the held-out split "
                              f"of its dataset ({record.dataset.source or name}) cannot be rebuilt; pass --dataset FILE "
                              "with items it did not train on")
        return DataRequest(name, None, None, None, seed)
    return _run_split(record, seed)


def _same_file(given: str, recorded: Any) -> bool:
    return isinstance(recorded, str) and Path(given).expanduser().resolve() == Path(recorded)


def _held_out_file_request(held_out: str, record: RunRecord, seed: int, columns: str | None) -> DataRequest:
    """A run scored on every item of the file ``held_out``, beside the rows it trained on (which set the answer
    length and are checked for the items' prompts) where its data can be rebuilt."""
    config = record.config
    if config is None:  # a record without settings (kbit 0.1's): what it trained on cannot be rebuilt
        return DataRequest(None, columns, held_out, seed=seed)
    return DataRequest(None, columns or config.columns, held_out, seed=seed, run_split=_run_split(record, config.seed))


def _run_split(record: RunRecord, seed: int) -> DataRequest:
    """The split ``record``'s run trained beside (its recorded settings), checked against its fingerprint."""
    config = record.config
    return DataRequest(
        dataset=config.dataset,
        columns=config.columns,
        held_out=config.held_out,
        max_examples=config.max_examples,
        seed=seed,
        trained_on=(record.name or "", record.dataset.fingerprint) if record.dataset.fingerprint else None,
    )


# Loading -----------------------------------------------------------------------------------


@attrs.frozen
class Loaded:
    model: Any
    tokenizer: Any
    load_s: float


def load_candidate(candidate: Candidate, device: DeviceInfo) -> Loaded:
    """Load ``candidate``'s model (eval mode, on ``device``) and tokenizer."""
    from kbit.core.model.sources import load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(ModelSource(path=candidate.tokenizer_path, name=candidate.label, origin="local"),
                               trust_remote_code=candidate.trust_remote_code)
    device_map = device_map_for(device)
    if candidate.spec is not None:
        from kbit.core.methods.registry import get_method

        from kbit.core.model.bases import load_base

        method = get_method(candidate.method)
        model = load_base(method, candidate.spec, candidate.base_path or candidate.path,
                          trust_remote_code=candidate.trust_remote_code, device_map=device_map)
        if candidate.variant == "adapter":
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, candidate.path)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ConfigError(f"cannot load the adapter in {candidate.path}: {_first_line(exc)}") from None
            from kbit.core.model.adapters import through_grid

            model = method.prepare_inference(through_grid(model, candidate.spec), candidate.spec)  # as a run scores it
    else:
        model = load_plain(candidate.path, trust_remote_code=candidate.trust_remote_code, device_map=device_map)
    model.eval()
    return Loaded(model, tokenizer, time.perf_counter() - started)


def load_plain(path: str, *, trust_remote_code: bool = False, device_map: Any = None) -> Any:
    """A model directory as stored: its own dtype and, if any, its own quantization config."""
    from transformers import AutoModelForCausalLM

    from kbit.core.model.check import check_layer_count
    from kbit.core.model.resident_memory import release_load_memory

    if Path(path).is_dir():
        check_layer_count(Path(path))  # transformers would build every declared layer first: minutes for a million
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", trust_remote_code=trust_remote_code,
                                                     use_safetensors=True, device_map=device_map)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot load model from {path}: {_first_line(exc)}") from None
    release_load_memory(model)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
