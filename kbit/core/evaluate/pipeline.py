"""``kbit eval``: evaluate runs and models on held-out data and write a comparison report.

plan candidates (metadata only) → load every held-out split and its answer budget → for each
candidate, one at a time: load as its metadata says, completion loss (timed: forward tokens/s),
greedy answers to the end-of-turn token under the budget and task scores, decoding speed on a
fixed number of forced new tokens, memory and bits per weight → report folder (json, markdown,
plot, predictions), written atomically. All input checks happen before the first model is loaded.
A .gguf file runs in llama.cpp where asked or installed (``kbit.core.evaluate.in_llama_cpp``) and is
compared with a reference model (``kbit.core.evaluate.reference``).
"""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import re
import time
from pathlib import Path
from typing import Any

import attrs

from kbit.core.runs import stamps as meta
from kbit.core.data import TaskData, check_recorded_file, check_trained_on, load_items, load_task_data, trained_prompts
from kbit.core.system.device import DeviceInfo, detect_device, release_memory
from kbit.core.errors import ConfigError
from kbit.core.data.split import held_out_size
from kbit.core.measure.budget import GenerationBudget, check_fits_context, generation_budget
from kbit.core.measure.generation import Answers, decode_speed, generate_answers
from kbit.core.evaluate.loading import (
    RUNTIMES,
    Candidate,
    DataRequest,
    Selection,
    check_variants,
    load_candidate,
    plan_candidates,
)
from kbit.core.measure.metrics import (checkpoint_packed_bits, completion_loss, gguf_linear_bits, linear_weight_bits,
                                      memory_footprint, task_scores)
from kbit.core.evaluate.report import write_report
from kbit.core.measure.sample_size import MIN_ITEMS, small_sample_warning, too_few
from kbit.core.measure.scoring import MATH_TASKS, math_scorer
from kbit.core.model.check import load_config
from kbit.core.contract.options import integer
from kbit.core.runs.folder import check_writable, is_free
from kbit.core.runs.outputs import claim, kbit_kind

log = logging.getLogger("kbit")
REPORTS_ROOT = Path("reports")
REPORT_BYTES = 16 << 20  # report.json, report.md, predictions and the plot, with room to spare
SPEED_NEW_TOKENS = 32  # forced new tokens per prompt in the decoding-speed measurement


LOSS_BATCH_SIZE = 8  # the loss pass and the speed run, unless --batch-size says otherwise


@attrs.frozen
class EvalConfig:
    """Settings of one ``kbit eval``: what to evaluate (``selection``) and how much of it."""

    selection: Selection = attrs.field(factory=Selection)
    limit: int = attrs.field(default=100, converter=integer(minimum=1))
    # None: each dataset's budget from its training completions (kbit.core.measure.budget)
    max_new_tokens: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=1)))
    # None: greedy answers in batches of ``answer_batch_size`` (as kbit train scores them), the loss pass
    # and the speed run in batches of LOSS_BATCH_SIZE
    batch_size: int | None = attrs.field(default=None, converter=attrs.converters.optional(integer(minimum=1)))
    out: str | None = None
    overwrite: bool = False


@attrs.frozen
class EvalResult:
    out_dir: Path
    report: dict[str, Any]


def build_eval_config(**values: Any) -> EvalConfig:
    """An ``EvalConfig`` from CLI-style values (``None`` = default); invalid values raise ConfigError."""
    selection_fields = {f.name for f in attrs.fields(Selection)}
    chosen = {k: v for k, v in values.items() if v is not None}
    selection = {k: v for k, v in chosen.items() if k in selection_fields}
    if "variants" in selection:
        selection["variants"] = check_variants(selection["variants"])
    if selection.get("runtime", "auto") not in RUNTIMES:
        raise ConfigError(f"unknown --runtime '{selection['runtime']}'; choose from {', '.join(RUNTIMES)}")
    for key in ("paths", "models"):
        if key in selection:
            selection[key] = tuple(selection[key])
    for key, minimum in (("max_examples", 2), ("seed", 0)):
        if key in selection:
            selection[key] = _checked(key, selection[key], minimum)
    if "held_out" in selection:
        try:
            selection["held_out"] = held_out_size(selection["held_out"])
        except ValueError as exc:
            raise ConfigError(f"invalid value for 'held_out': {exc}") from None
    rest = {k: v for k, v in chosen.items() if k not in selection_fields}
    try:
        return EvalConfig(selection=Selection(**selection), **rest)
    except ValueError as exc:
        field = next((k for k in rest if k != "out"), "setting")
        raise ConfigError(f"invalid value for '{field}': {exc}") from None


def _checked(name: str, value: Any, minimum: int) -> int:
    try:
        return integer(minimum=minimum)(value)
    except ValueError as exc:
        raise ConfigError(f"invalid value for '{name}': {exc}") from None


def run_eval(config: EvalConfig, device: DeviceInfo | None = None) -> EvalResult:
    """Evaluate every planned candidate and write the report; returns its folder and content."""
    device = device or detect_device()
    candidates, gaps = plan_candidates(config.selection, device)
    out_dir = claim_report_dir(config, candidates)
    free = is_free(out_dir)  # then nothing that appears there while scoring is replaced
    check_writable(out_dir, min_free_bytes=REPORT_BYTES, flag="--out", needs="the report needs")  # before any scoring
    _check_answer_budget(config.max_new_tokens, candidates)
    data_warnings: list[str] = []
    trained: dict[DataRequest, frozenset[Any]] = {}  # prompts the model trained on, where known
    datasets = {request: _held_out(request, config.limit, data_warnings, trained)
                for request in dict.fromkeys(c.data for c in candidates)}
    budgets: dict[DataRequest, dict[GenerationBudget, list[str]]] = {}  # models of another tokenizer get another budget
    rows: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for candidate in candidates:
        data, items = datasets[candidate.data]
        row, predicted, budget = evaluate_candidate(candidate, data, items, config, device, trained.get(candidate.data))
        budgets.setdefault(candidate.data, {}).setdefault(budget, []).append(f"{candidate.label} {candidate.display_variant}")
        rows.append(row)
        predictions += predicted
    report = {
        "kind": "eval",
        "created": meta.now(),
        "settings": {
            "limit": config.limit,
            "max_new_tokens": config.max_new_tokens if config.max_new_tokens is not None else "per dataset",
            "held_out": config.selection.held_out,
            "speed": {"tokens_per_s": f"greedy decoding, exactly {SPEED_NEW_TOKENS} new tokens for each of up to the first "
                                      f"{config.batch_size or LOSS_BATCH_SIZE} held-out prompts in one batch (end-of-turn suppressed), "
                                      "after a warm-up: comparable across variants whatever their answer length",
                      "forward_tokens_per_s": "prompt + answer tokens of every held-out item through one forward "
                                              f"pass each (the loss measurement, batch {config.batch_size or LOSS_BATCH_SIZE})"},
            "min_items": MIN_ITEMS,
            "batch_size": config.batch_size or f"answers: auto (a 1 GiB KV cache, at most 128); loss and speed: {LOSS_BATCH_SIZE}",
            "seed": config.selection.seed if config.selection.seed is not None else "per run (default 0)",
            "variants": list(config.selection.variants) or "all present",
            "method": config.selection.method,
            "method_options": dict(config.selection.options),
            "dataset_override": config.selection.dataset,
            "runtime": config.selection.runtime,
            "lora": config.selection.lora,
            "reference": config.selection.reference,
        },
        "device": attrs.asdict(device),
        "datasets": [{**data.describe(), "request": attrs.asdict(request), "evaluated_items": len(items),
                      **_generation(budgets.get(request, {})),
                      **({"scoring": math_scorer()} if data.task in MATH_TASKS else {})}
                     for request, (data, items) in datasets.items()],
        "warnings": data_warnings + _sample_warnings(rows, datasets, config.limit) + _context_warnings(rows)
                    + _reference_warnings(rows),
        "rows": rows,
        "gaps": [g.to_dict() for g in gaps],
        "versions": meta.package_versions(),
    }
    write_report(out_dir, report, predictions, exclusive=free)
    return EvalResult(out_dir, report)


def _generation(budgets: dict[GenerationBudget, list[str]]) -> dict[str, Any]:
    """A dataset's answer budget for the report: ``generation``, and where models of other tokenizers had other
    budgets, ``generation`` names its models and ``other_generation`` lists the rest with theirs."""
    if not budgets:
        return {}
    (first, models), *others = budgets.items()
    if not others:
        return {"generation": first.to_dict()}
    return {"generation": {**first.to_dict(), "models": models},
            "other_generation": [{**budget.to_dict(), "models": names} for budget, names in others]}


def _check_answer_budget(max_new_tokens: int | None, candidates: list[Candidate]) -> None:
    """Refuse a ``--max-new-tokens`` past a candidate's context before any model is loaded or scored."""
    if max_new_tokens is None:
        return
    for candidate in candidates:
        folder = Path(candidate.base_path or candidate.path)
        if (folder / "config.json").is_file():
            check_fits_context(max_new_tokens, load_config(str(folder), candidate.trust_remote_code))


def claim_report_dir(config: EvalConfig, candidates: list[Candidate]) -> Path:
    """The report folder: ``--out`` under the output rule (only an earlier report is replaced, never a folder
    holding what is evaluated), else a new one."""
    target = Path(config.out) if config.out else default_out_dir(candidates)
    inputs = (*config.selection.paths, *config.selection.models, config.selection.dataset,
              *(path for c in candidates for path in (c.path, c.tokenizer_path, c.base_path, *c.data.files, c.gguf,
                                                      c.lora, c.reference and c.reference.path)),
              *_runs_made_from([*config.selection.paths, *(c.source for c in candidates)]))
    claimed = claim(target, is_own=lambda p: kbit_kind(p) == "eval", kind="eval", overwrite=config.overwrite,
                    flag="--out", what="report folder", inputs=inputs)
    return claimed if config.out else target  # the default, new folder is shown as reports/NAME


def _runs_made_from(paths: list[str]) -> list[str | None]:
    """What the runs among (or around) ``paths`` were made from, evaluated variant or not: a report never replaces it."""
    from kbit.core.runs.outputs import enclosing_run
    from kbit.core.runs.record import read_record

    made_from: list[str | None] = []
    for run in dict.fromkeys(enclosing_run(Path(path).expanduser()) for path in paths):
        record = read_record(run) if run is not None else None
        made_from += record.made_from() if record is not None else []
    return made_from


def default_out_dir(candidates: list[Candidate]) -> Path:
    labels = list(dict.fromkeys(c.label for c in candidates))
    name = labels[0] if len(labels) == 1 else "eval"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # letters of any script are kept (a run may be named 日本語モデル); a folder name is at most 255 bytes, with
    # kbit's staging suffix, and does not start with "-", which shell tools read as an option
    safe = re.sub(r"[^\w.+-]", "-", name).lstrip("-.").encode()[:150].decode(errors="ignore") or "model"
    return REPORTS_ROOT / f"{safe}-{stamp}"


def _context_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A line for each row some of whose items are longer than its model's context (their loss is over their
    beginning, as training cuts them)."""
    return [f"{r['model']} {r['variant']}: {r['cut_to_context']} of the {r['items']} items of {r['dataset']} "
            f"{'is' if r['cut_to_context'] == 1 else 'are'} longer than the model's context of {r['context']} tokens, "
            f"so scored on {'its' if r['cut_to_context'] == 1 else 'their'} first {r['context']} tokens"
            for r in rows if r.get("cut_to_context")]


def _reference_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A line for each file that agrees with its reference on fewer than half of the answer tokens (seen: --reference
    naming another model with the same vocabulary gave 0% without a word). The figures cannot tell a file made from
    another model from a lossy quantization of this one (a small model's own q4_0 file fell under it), so the line
    says both."""
    return [f"{r['model']}: answer top-1 agreement with its reference ({r['reference']}) is {r['answer_top1']:.0%} "
            f"(every position: {r['same_top_p']:.0%}, mean KL {r['kl']:.3g} nats): the file computes far from that model, "
            "as a lossy quantization of it or a file made from another model does; check that --reference names its source"
            for r in rows if r.get("answer_top1") is not None and r["answer_top1"] < 0.5]


def _sample_warnings(rows: list[dict[str, Any]], datasets: dict[DataRequest, tuple[TaskData, list[Any]]],
                     limit: int) -> list[str]:
    """One line per dataset evaluated on fewer than ``MIN_ITEMS`` items, with the way to score more: a higher
    ``--limit`` where it cut them, else a larger split or file."""
    counts = dict.fromkeys((r["dataset"], r["items"]) for r in rows if too_few(r.get("items")))
    hints = {data.name: _more_items_hint(request, len(data.held_out), limit) for request, (data, _) in datasets.items()}
    shown = "; exact match is shown as hits/items with its 95% interval; "
    return [f"{dataset}: " + small_sample_warning(items, shown + hints.get(dataset, f"score {MIN_ITEMS} items or more"))
            for dataset, items in counts]


def _more_items_hint(request: DataRequest, available: int, limit: int) -> str:
    if available > limit:
        return f"use --limit {MIN_ITEMS} or more"
    if isinstance(request.held_out, str):
        return f"score a file of {MIN_ITEMS} items or more"
    if request.trained_on is not None:
        return (f"the run holds out {available}: train it with --held-out {MIN_ITEMS} or more, or score a --held-out "
                f"file of {MIN_ITEMS} items or more")
    return f"use --held-out {MIN_ITEMS} or more"


OTHER_ITEMS = ", or pass --dataset FILE with items it did not train on"


def _load(request: DataRequest) -> TaskData:
    if request.dataset is None:
        return load_items(request.held_out, columns=request.columns)
    if request.trained_on is not None:
        check_recorded_file(request.dataset, request.trained_on[0], OTHER_ITEMS, request.held_out)
    data = load_task_data(request.dataset, columns=request.columns, held_out=request.held_out,
                          max_examples=request.max_examples, seed=request.seed)
    if request.trained_on is not None:
        run, fingerprint = request.trained_on
        check_trained_on(data, fingerprint, run, OTHER_ITEMS, request.held_out)
    if isinstance(request.held_out, str):  # items of a file: named by it, not by the training rows beside them
        data = attrs.evolve(data, name=Path(request.held_out).stem)
    return data


def _held_out(request: DataRequest, limit: int, warnings: list[str],
              trained: dict[DataRequest, frozenset[Any]]) -> tuple[TaskData, list[Any]]:
    """The data of ``request`` and the items scored; lines for ``warnings`` (the report's) where items ask a prompt
    the run (or the dataset beside a file) trained on, whose prompts go into ``trained``. A file scored on its own
    beside a run's split takes the run's training rows as its own (they set the answer length)."""
    data = _load(request)
    items = list(data.held_out[:limit])
    if not items:
        raise ConfigError(f"dataset {data.source} has no held-out examples to evaluate")
    file = request.held_out if isinstance(request.held_out, str) else None
    if request.run_split is not None:
        rows, lines = _trained_items(request.run_split, items, file or data.source)
        warnings += lines
        if rows is not None:
            trained[request] = frozenset(e.prompt for e in rows)
            if request.dataset is None:
                data = attrs.evolve(data, train=rows)
    elif request.trained_on is not None:  # the run's own split
        trained[request] = frozenset(e.prompt for e in data.train)
        if shared := trained_prompts(data.train, items):
            warnings.append(f"{shared} of the {len(items)} items of run {request.trained_on[0]}'s own held-out split ask a "
                            "prompt it trained on (a row repeated in its data, or held-out items its training file holds "
                            "too): their scores measure recall")
    elif file and request.dataset is not None:  # a file beside --dataset, for a model outside a run
        trained[request] = frozenset(e.prompt for e in data.train)
        if shared := trained_prompts(data.train, items):
            warnings.append(f"{shared} of the {len(items)} items of {file} ask a prompt a row of {data.source} asks too: "
                            "a model trained on it answers them from memory")
    if repeated := len(items) - len({e.prompt for e in items}):
        warnings.append(f"{repeated} of the {len(items)} items of {data.name} ask the prompt of an earlier item: "
                        "the 95% interval counts each as evidence of its own")
    empty = next((i for i, e in enumerate(items) if not e.completion.strip()), None)
    if empty is not None:
        raise ConfigError(f"dataset {data.source} held-out example {empty + 1} has an empty completion; "
                          "check --columns (completion=COL must name the answer column)")
    return data, items


def _trained_items(run_split: DataRequest, items: list[Any], source: str) -> tuple[tuple[Any, ...] | None, list[str]]:
    """The rows the run behind ``run_split`` trained on (None where they cannot be read again) and the line counting
    ``items`` (scored from ``source``) whose prompt it trained on."""
    run = run_split.trained_on[0] if run_split.trained_on else run_split.dataset
    try:
        trained = _load(run_split).train
    except ConfigError as exc:
        return None, [f"not checked whether run {run} trained on the items of {source}: its data cannot be read again ({exc})"]
    if shared := trained_prompts(trained, items):
        return trained, [f"{shared} of the {len(items)} items scored from {source} ask a prompt run {run} trained on: their "
                         "scores measure recall; score the run on its own split (no --dataset or --held-out) or on items "
                         "it never saw"]
    return trained, []


@attrs.frozen
class Measured:
    """What one runtime measured of a candidate: greedy answers, completion loss (``completion_loss``'s
    keys), the answer budget and the row entries only this runtime has (memory, speed, agreement...)."""

    answers: Answers
    loss: dict[str, Any]
    budget: GenerationBudget
    figures: dict[str, Any]


def evaluate_candidate(candidate: Candidate, data: TaskData, items: list[Any], config: EvalConfig, device: DeviceInfo,
                       trained: frozenset[Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], GenerationBudget]:
    """Load ``candidate`` and measure it on ``items``: the report row, its per-example predictions (each marked
    ``trained_prompt`` where ``trained``, the prompts the model trained on, is known) and the answer budget used
    (``--max-new-tokens``, else from ``data``'s training completions)."""
    from transformers import set_seed

    set_seed(candidate.data.seed)
    if candidate.runtime == "llama.cpp":
        from kbit.core.evaluate.in_llama_cpp import measure_in_llama_cpp

        measured = measure_in_llama_cpp(candidate, data, items, config.max_new_tokens, device)
    else:
        measured = _measure_in_torch(candidate, data, items, config, device)
    answers, loss = measured.answers, measured.loss
    per_example, means = task_scores(data.task, answers.texts, items)
    row = {
        "model": candidate.label,
        "variant": candidate.display_variant,
        "method": candidate.method or candidate.produced_by,
        "runtime": candidate.runtime,
        "source": candidate.source,
        "path": candidate.gguf or candidate.path,
        **({"lora": candidate.lora} if candidate.lora else {}),
        "disk_bytes": disk_bytes(candidate),
        "dataset": data.name,
        "task": data.task,
        "items": len(items),
        "loss": loss["loss"],
        "perplexity": loss["perplexity"],
        "loss_tokens": loss["tokens"],
        "context": loss["context"],
        "cut_to_context": loss["cut_to_context"],
        **means,
        "max_new_tokens": measured.budget.max_new_tokens,
        "answers_cut": answers.cut,
        "mean_answer_tokens": round(sum(answers.new_tokens) / len(items), 1),
        **measured.figures,
    }
    predicted = [
        {
            "model": candidate.label,
            "variant": candidate.display_variant,
            "index": i,
            "prompt": _prompt_text(example),
            "messages": example.prompt_messages(),  # what the chat template renders (the text above joins them)
            "prediction": answer,
            "answer_tokens": length,
            "gold": example.answers[0] if example.answers else example.completion,
            "answers": list(example.answers),
            "scores": scores,
            "loss": per_loss,
            **({"trained_prompt": example.prompt in trained} if trained is not None else {}),
        }
        for i, (example, answer, length, scores, per_loss) in enumerate(
            zip(items, answers.texts, answers.new_tokens, per_example, loss["per_example"]))
    ]
    return row, predicted, measured.budget


def disk_bytes(candidate: Candidate) -> int | None:
    """The bytes on disk of the weights ``candidate`` needs: a GGUF file (with its LoRA file; in transformers too,
    which runs kbit's float conversion of it), a folder's safetensors files, an adapter's and its base's together
    (a quantized-training method quantizes the base as it loads it); None where one of them is no local file or
    folder of safetensors (a hub id)."""
    from kbit.core.train.plan import weights_bytes

    file = candidate.gguf or (candidate.source if candidate.source.endswith(".gguf") else None)
    parts = [file, candidate.lora] if file else [candidate.path]
    if candidate.variant == "adapter":
        parts.append(candidate.base_path)
    total = 0
    for part in filter(None, parts):
        path = Path(part)
        size = path.stat().st_size if path.is_file() else weights_bytes(path) if path.is_dir() else 0
        if not size:
            return None
        total += size
    return total


def announce(candidate: Candidate, data: TaskData, items: list[Any]) -> None:
    log.info("evaluating %s (%s) on %d held-out item%s of %s", candidate.label, candidate.display_variant, len(items),
             "" if len(items) == 1 else "s", data.name)


def _measure_in_torch(candidate: Candidate, data: TaskData, items: list[Any], config: EvalConfig,
                      device: DeviceInfo) -> Measured:
    """Load ``candidate`` with transformers and measure it (see ``Measured``)."""
    loaded = load_candidate(candidate, device)  # a candidate that cannot load fails before anything is said of it
    announce(candidate, data, items)
    file = candidate.source.endswith(".gguf")  # dequantized to float to run here: its memory is not the file's
    model, tokenizer, load_s = loaded.model, loaded.tokenizer, loaded.load_s
    try:
        budget = generation_budget(tokenizer, data, config.max_new_tokens, model)
        generate_answers(model, tokenizer, items[:1], max_new_tokens=2)  # warm-up, so speed is comparable
        started = time.perf_counter()
        loss = completion_loss(model, tokenizer, items, batch_size=config.batch_size or LOSS_BATCH_SIZE)
        forward_s = time.perf_counter() - started
        generated = generate_answers(model, tokenizer, items, max_new_tokens=budget.max_new_tokens,
                                     batch_size=config.batch_size)
        speed = decode_speed(model, tokenizer, items, new_tokens=SPEED_NEW_TOKENS,
                             batch_size=config.batch_size or LOSS_BATCH_SIZE)
        footprint = memory_footprint(model)
        folder = Path(candidate.path)
        bits = (gguf_linear_bits(candidate.gguf or candidate.source) if file  # as the file stores them
                else linear_weight_bits(model, checkpoint_packed_bits(folder) if folder.is_dir() else None))
        agreement = {}
        if candidate.reference is not None:
            from kbit.core.evaluate.reference import reference_agreement, torch_logits

            agreement = reference_agreement(candidate.reference, torch_logits(model), items, device,
                                              runtime_rounding=False)
        elapsed = time.perf_counter() - started
    finally:
        del model, loaded
        gc.collect()
        release_memory(device)
    return Measured(generated, loss, budget, {
        "memory_bytes": None if file else footprint,
        "bits_per_weight": bits["bits_per_weight"],
        "linear_weights": bits["linear_weights"],
        "tokens_per_s": speed["tokens_per_s"],
        "forward_tokens_per_s": loss["input_tokens"] / forward_s if forward_s > 0 else None,
        **agreement,
        "load_s": round(load_s, 2),
        "eval_s": round(elapsed, 2),
    })


def _prompt_text(example: Any) -> str:
    return "\n".join(content for _, content in example.prompt)


