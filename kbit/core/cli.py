"""The ``kbit`` command line. Start-up and listing import no torch; each command imports its pipeline lazily."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Annotated, Optional

import attrs
import typer

from kbit.core.errors import ConfigError, KbitError
from kbit.core.train.config import TrainConfig

# The train flags default to None (a --config file may set what a flag leaves out); their help shows TrainConfig's.
TRAIN_DEFAULTS = {field.name: field.default for field in attrs.fields(TrainConfig)}

app = typer.Typer(
    name="kbit",
    help="Fine-tune LLMs on quantized bases; quantization methods are plugins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False, "verbose": False, "quiet": False}

VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show everything: third-party warnings and progress bars.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Show only results and errors.")]
OptionsArg = Annotated[
    Optional[list[str]],
    typer.Option("--option", "-o", help="Method option as key=value (repeatable), e.g. -o r=16."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    _state.update(debug=debug, verbose=verbose, quiet=quiet)


def _console(verbose: bool, quiet: bool) -> None:
    """Set up the console of a command that trains, evaluates or writes models (``kbit.core.system.console``).

    Imports no torch; ``_load_libraries`` does, right before the command's pipeline.
    """
    from kbit.core.system.console import setup_console

    verbose, quiet = verbose or bool(_state["verbose"]), quiet or bool(_state["quiet"])
    if verbose and quiet:
        raise ConfigError("--verbose and --quiet contradict each other; give one of them")
    setup_console("verbose" if verbose else "quiet" if quiet else "normal")


# Whether kbit runs as the program (``main()`` given no arguments) rather than called in-process; set by ``_run_app``.
_as_program = False


def _load_libraries(*modules: str) -> None:
    """Route torch's and transformers' logs through kbit's console and import the command's ``modules``.

    As the program, kbit then freezes what the imports created (``gc.freeze``): every full garbage
    collection otherwise walks those ~550k objects, 0.3 s each time, and kbit collects between stages
    to hand a model's memory back. Nothing a run allocates is frozen: no model is loaded yet. Called
    in-process, kbit leaves the caller's collector alone (a freeze would keep the caller's objects,
    garbage cycles included, for the life of the process)."""
    import gc
    import importlib

    from kbit.core.system.console import adopt_library_logs

    adopt_library_logs()
    for module in modules:
        importlib.import_module(module)
    if _as_program:
        gc.freeze()


@app.command("methods")
def methods_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """List every installed method: aliases, provider, status and capabilities."""
    from kbit.core.methods.registry import default_registry

    records = [r.to_dict() for r in default_registry().records()]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kbit methods")
    for column in ("method", "aliases", "provided by", "status", "capabilities"):
        table.add_column(column)
    for r in records:
        caps = r["capabilities"]
        cap_text = ", ".join(
            [f"peft: {'/'.join(caps['peft_types'])}"] if caps else []
        ) + "".join(
            f", {label}" for key, label in (
                ("quantized_training", "quantized base"),
                ("post_training_quantization", "post-training quantization"),
                ("needs_calibration", "calibration"),
                ("needs_gpu", "GPU only"),
            ) if caps.get(key)
        )
        status = r["status"]
        if status == "ready" and caps.get("needs_gpu") and not _cuda_here():
            status = "ready, needs a CUDA GPU (none here)"
        table.add_row(r["name"], ", ".join(r["aliases"]), f"{r['distribution']} {r['version']}", status, cap_text)
    Console().print(table)
    for r in records:  # below the table, unwrapped, so an install line can be copied whole
        if r["error"]:
            provider = f"{r['distribution']} {r['version']}"
            broken = r["status"] == "broken" and provider not in r["error"]
            said = f"{provider}: {r['error']}" if broken else r["error"]  # a broken plugin: whose to fix
            typer.echo(f"{r['name']} {r['status']}: {said}")


def _cuda_here() -> bool:
    import torch  # only for a method that needs a GPU: listing stays torch-free otherwise

    return torch.cuda.is_available()


@app.command("spec")
def spec_command(
    method: Annotated[str, typer.Argument(help="Method name or alias (see 'kbit methods').")],
    option: OptionsArg = None,
    options: Annotated[bool, typer.Option("--options", help="List the method's options: default, allowed values, help.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """Show the resolved quantization spec of METHOD and the quantization config it would build (--options: its options)."""
    from kbit.core.contract.options import parse_assignments
    from kbit.core.methods.registry import default_registry, get_method

    overrides = parse_assignments(option or [])
    chosen = get_method(method)
    clash = default_registry().clash_warning(chosen.name)
    if clash:
        typer.echo(f"kbit: warning: {clash}", err=True)
    if options:
        if overrides:
            raise ConfigError("--options lists the defaults; drop -o, or drop --options to see the spec with it")
        _print_options(chosen.name, chosen.info.options.describe(), as_json)
        return
    chosen.check_requirements()
    spec = chosen.resolve_spec(overrides)
    from kbit.core.model.bases import check_loftq

    check_loftq(chosen, spec)  # as kbit train refuses it: a spec shown is one a run takes
    config = chosen.build_quant_config(spec)
    policy = chosen.merge_policy(spec)
    result = {
        "method": chosen.name,
        "distribution": f"{chosen.distribution} {chosen.version}",
        "spec": spec.to_dict(),
        "quant_config": None if config is None else {"class": type(config).__name__, **_jsonable(config.to_dict())},
        "merge_policy": policy.to_dict(),
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(result))


def _print_options(method: str, described: list[dict], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{method} options (-o NAME=VALUE)")
    table.add_column("option", no_wrap=True)
    for column in ("default", "allowed", "help"):
        table.add_column(column)
    for o in described:
        table.add_row(o["name"], _as_typed(o["default"]), o["allowed"] or o["type"], o["help"])
    Console().print(table)


def _as_typed(value: object) -> str:
    """A value as a user would type it after -o NAME=."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


@app.command("train")
def train_command(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory, .gguf file or hub id (default: the embedded SmolLM2 135M Instruct).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="arith (default), openmath, squad, a .jsonl, .json, .csv or .parquet file or a hub dataset.")] = None,
    columns: Annotated[Optional[str], typer.Option("--columns", help="Column mapping for other tables: prompt=COL, completion=COL and answer=COL (optional), comma-separated.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Quantization method (see 'kbit methods'); default qlora.")] = None,
    option: OptionsArg = None,
    peft: Annotated[Optional[str], typer.Option("--peft", help="Adapter type: lora, dora or vera (where the method allows).")] = None,
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="YAML file of settings; flags win over it.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-O", help="Run directory (default runs/NAME).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name tag (default derived from model, data and method).")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help=f"Optimizer steps (0 = use --epochs; default {TRAIN_DEFAULTS['max_steps']}).")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help=f"Passes over the data when --max-steps is 0 (default {TRAIN_DEFAULTS['epochs']}).")] = None,
    batch_size: Annotated[Optional[str], typer.Option("--batch-size", help=f"Micro-batch size or 'auto' (default {TRAIN_DEFAULTS['batch_size']}).")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help=f"Micro-batches per optimizer step (default {TRAIN_DEFAULTS['grad_accum']}).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", "--learning-rate", help="Peak learning rate (default: the method's own, else 2e-3).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help=f"linear, cosine, constant, constant_with_warmup (default {TRAIN_DEFAULTS['scheduler']}).")] = None,
    optim: Annotated[Optional[str], typer.Option("--optim", help="Optimizer, as transformers names it: adamw_torch, paged_adamw_8bit (QLoRA's), adafactor, … (default: transformers' own).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help=f"AdamW weight decay (default {TRAIN_DEFAULTS['weight_decay']}).")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option("--max-grad-norm", help=f"Clip gradients to this norm, 0 = never (default {TRAIN_DEFAULTS['max_grad_norm']}).")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option("--warmup-ratio", help=f"Fraction of steps spent warming up the learning rate (default {TRAIN_DEFAULTS['warmup_ratio']}).")] = None,
    turns: Annotated[Optional[str], typer.Option("--turns", help="Assistant answers of a conversation to train: last (default; the one scored) or all (one example per answer).")] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=f"Tokens per example: a longer completion is cut; a prompt that alone reaches it is refused (default {TRAIN_DEFAULTS['max_length']}).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help=f"Seed of the split, shuffling and adapter start (default {TRAIN_DEFAULTS['seed']}).")] = None,
    packing: Annotated[Optional[bool], typer.Option("--packing/--no-packing", help=f"Pack several examples into each row (default {'on' if TRAIN_DEFAULTS['packing'] else 'off'}).")] = None,
    padding_free: Annotated[Optional[str], typer.Option("--padding-free", help="Micro-batches as one row of concatenated examples, no padding: auto (where the attention keeps examples apart and padding would be >= 15%), true or false.")] = None,
    logging_steps: Annotated[Optional[int], typer.Option("--logging-steps", help=f"Log the training loss every N steps (default {TRAIN_DEFAULTS['logging_steps']}).")] = None,
    save_steps: Annotated[Optional[int], typer.Option("--save-steps", help=f"Checkpoint every N steps (default {TRAIN_DEFAULTS['save_steps']}).")] = None,
    eval_steps: Annotated[Optional[int], typer.Option("--eval-steps", help="Held-out loss (on the first 32 scored items) every N steps (default: about 4 times a run and at the end; 0 = never).")] = None,
    report_to: Annotated[Optional[str], typer.Option("--report-to", help="Also log to none, tensorboard, wandb or trackio (each an extra: pip install 'kbit[NAME]').")] = None,
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", help="Use at most N dataset rows.")] = None,
    held_out: Annotated[Optional[str], typer.Option("--held-out", help="Held-out examples: a count (50), a fraction (0.1, 10%) or a file of them (valid.jsonl); default 100 for arith, 10% of a file.")] = None,
    eval_limit: Annotated[Optional[int], typer.Option("--eval-limit", help=f"Held-out items scored before/after (0 = skip; default {TRAIN_DEFAULTS['eval_limit']}).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Cap on each held-out answer (default: from the training completions' length; answers end at the end-of-turn token).")] = None,
    merge_min_agreement: Annotated[Optional[float], typer.Option("--merge-min-agreement", help=f"Fail the run when the merged model agrees with the trained one on fewer top-1 predictions than this (default {TRAIN_DEFAULTS['merge_min_agreement']}; 0 keeps any merge).")] = None,
    merge_tolerance: Annotated[Optional[float], typer.Option("--merge-tolerance", help="Fail the run when the merged model's logits differ from the trained one's by more than this share of the adapter's own effect or of the largest logit, whichever is larger (default: 0.001 for float32 weights, more for 16-bit ones; see docs/plugins.md).")] = None,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="A finished run on the same data and split: the loss also pulls toward its merged model's answer distributions (KL; see docs/training.md).")] = None,
    trust_remote_code: Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Allow model code from the model repository.")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="Replace an earlier run, or a file, at --output (never a folder of files kbit did not write, one holding another kbit output, or this command's inputs).")] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue the run in this directory from its last checkpoint.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's record (its kbit.json) with its absolute path instead of the summary.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a model with adapters on a quantized base (defaults: SmolLM2 + arithmetic + qlora)."""
    from kbit.core.contract.options import parse_assignments
    from kbit.core.train.config import FIELDS, build_config, located

    flags = dict(locals())  # each flag is named as the TrainConfig field it sets (as_json is not one)
    _console(verbose, quiet)
    overrides = {field: flags[field] for field in FIELDS if field in flags}
    options = parse_assignments(option or [])
    if peft:
        if options.get("peft_type", peft) != peft:
            raise ConfigError(f"--peft {peft} and -o peft_type={options['peft_type']} ask for two adapter types; pass one")
        options["peft_type"] = peft
    overrides["options"] = options or None
    if resume and config:
        raise ConfigError("--config does not apply to --resume: a resumed run keeps the settings in its kbit.json; "
                          "drop --config")
    if resume:
        from kbit.core.train.config import resume_config

        settings = resume_config(resume, overrides)
    else:
        settings = located(build_config(config, overrides))
    _load_libraries("kbit.core.train.pipeline")
    from kbit.core.train.pipeline import run_training
    from kbit.core.train.summary import print_summary

    import contextlib

    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():  # stdout: the JSON alone
        result = run_training(settings, resume=bool(resume))
    if as_json:
        if result.record is not None:  # the main process of a multi-process run
            typer.echo(json.dumps({"run": str(result.run_dir.resolve()), **_jsonable(result.record.to_dict())}, indent=2))
        return
    print_summary(result)


@app.command("eval")
def eval_command(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Run directories (kbit.json) or model directories; default: the latest run under ./runs.")] = None,
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Also evaluate a base model: directory, .gguf, hub id or 'default' (repeatable).")] = None,
    variant: Annotated[Optional[list[str]], typer.Option("--variant", help="base, adapter, merged, quantized or gguf (a run's deploy files; repeatable; default: all present).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Also evaluate each base loaded through this method's quantization config (a run's own method without -o: with the run's spec, the base its 'before' score is of).")] = None,
    option: OptionsArg = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Evaluate on this dataset instead of each run's own.")] = None,
    columns: Annotated[Optional[str], typer.Option("--columns", help="Column mapping for --dataset: prompt=COL, completion=COL and answer=COL (optional), comma-separated.")] = None,
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", help="Read at most N rows of --dataset.")] = None,
    held_out: Annotated[Optional[str], typer.Option("--held-out", help="Held-out split of --dataset: a count (50) or a fraction (0.1, 10%); or a file whose every item is scored (the answer length from the training rows beside it, else from its own answers). A run is otherwise scored on its own split.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Held-out items per model (default 100).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Cap on each answer (default: from the training completions' length; answers end at the end-of-turn token).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Examples per batch (default: greedy answers in batches that a 1 GiB KV cache holds, at most 128, as kbit train scores; the loss pass and the speed run 8).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Data split seed (default: each run's seed, else 0).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-O", help="Report folder (default reports/NAME-TIMESTAMP, NAME 'eval' for several models); an earlier report there is replaced, anything else refused.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a file at --out (an earlier report is replaced anyway; never a run, a folder of files kbit did not write or holding kbit outputs, or this command's inputs).")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from plain model repositories.")] = False,
    runtime: Annotated[Optional[str], typer.Option("--runtime", help="Where a .gguf file runs: auto (llama.cpp when llama-cpp-python is installed), llama.cpp or transformers.")] = None,
    lora: Annotated[Optional[str], typer.Option("--lora", help="A llama.cpp LoRA adapter .gguf applied to the .gguf file (needs llama.cpp).")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", help="Compare a .gguf file's next-token logits with this model (default: the trained adapter model of the run whose gguf/ folder holds the file).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout instead of the table.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate runs and models on held-out data: loss, perplexity, task scores, memory, bits/weight, speed;
    a .gguf file also in llama.cpp, with its agreement with a reference model."""
    _console(verbose, quiet)
    _load_libraries("kbit.core.evaluate.pipeline")
    from kbit.core.evaluate.pipeline import build_eval_config, run_eval
    from kbit.core.evaluate.report import print_table
    from kbit.core.contract.options import parse_assignments

    settings = build_eval_config(
        paths=paths or None, models=model or None, variants=variant or None, method=method,
        options=parse_assignments(option or []), dataset=dataset, columns=columns, max_examples=max_examples, held_out=held_out,
        seed=seed, trust_remote_code=trust_remote_code, limit=limit, max_new_tokens=max_new_tokens,
        batch_size=batch_size, out=out, overwrite=overwrite or None, runtime=runtime, lora=lora, reference=reference,
    )
    result = run_eval(settings)
    if as_json:
        typer.echo(json.dumps(_report_json(result.out_dir), indent=2))
        return
    print_table(result.report, result.out_dir)


@app.command("quantize")
def quantize_command(
    path: Annotated[str, typer.Argument(help="A kbit run directory (quantizes its merged model) or a model directory.")],
    method: Annotated[Optional[str], typer.Option("--method", help="Post-training method, e.g. gptq or awq (default: the run's method).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Quantization option as key=value (repeatable), e.g. -o bits=8 or -o group_size=64.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-O", help="Output directory (default RUN/quantized; required for a model directory).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Calibration data (default: the run's training data, else arith).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a file at --output (an earlier quantized model is replaced anyway; never a run, a folder of files kbit did not write or holding kbit outputs, or this command's inputs).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the quantize record as JSON.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Quantize a merged model after training (GPTQ, AWQ, ...) into a compressed checkpoint."""
    import contextlib

    _console(verbose, quiet)
    _load_libraries("kbit.core.quantize")
    from pathlib import Path

    from kbit.core.contract.options import parse_assignments
    from kbit.core.quantize import quantize_path

    with contextlib.redirect_stdout(sys.stderr):  # quantizers print progress; keep stdout for the result
        target, record = quantize_path(Path(path), method, parse_assignments(option or []),
                                       Path(output) if output else None, dataset, overwrite)
    if as_json:
        typer.echo(json.dumps({"output": str(target.resolve()), **_jsonable(record.quantize.to_dict())}, indent=2))
        return
    info = record.quantize
    typer.echo(f"quantized with {info.method} ({info.format}) in {info.seconds} s from "
               f"{info.calibration_samples} calibration texts: {target} ({info.size_bytes / 2**20:.1f} MiB)")


@app.command("export")
def export_command(
    path: Annotated[str, typer.Argument(help="A kbit run (exports its merged model) or a model: directory, .gguf, hub id or 'default'.")],
    format: Annotated[str, typer.Option("--format", help="File format (gguf).")] = "gguf",
    file_type: Annotated[Optional[str], typer.Option("--type", help="f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, tq2_0 or mxfp4 (default: the run's method's deploy type, else q8_0).")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-O", help="File to write (default RUN/gguf/NAME-TYPE.gguf; required for a model).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file this command did not write.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Held-out items the check uses (default: the run's eval limit, else 100).")] = None,
    max_kl: Annotated[Optional[float], typer.Option("--max-kl", help="Largest mean KL divergence (nats) from the source the check accepts on answer tokens, and for q8_0/f16/bf16 on every token too (default by type).")] = None,
    min_top1: Annotated[Optional[float], typer.Option("--min-top1", help="Least top-1 agreement (near-ties counted as agreeing) the check accepts (default: reported, not gated).")] = None,
    max_em_drop: Annotated[Optional[float], typer.Option("--max-em-drop", help="Largest exact-match drop the check accepts, as a fraction.")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="Where the file is checked: llama.cpp, transformers, or auto (llama.cpp when installed).")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the export record as JSON.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a deployable file (GGUF for llama.cpp, Ollama, LM Studio), check it against its source, record it."""
    import contextlib

    _console(verbose, quiet)
    _load_libraries("kbit.core.export.pipeline")
    from kbit.core.export.pipeline import export_path

    with contextlib.redirect_stdout(sys.stderr):  # loaders print progress; keep stdout for the result
        result = export_path(path, format=format, file_type=file_type, output=output, overwrite=overwrite, limit=limit,
                             min_top1=min_top1, max_em_drop=max_em_drop, max_kl=max_kl, runtime=runtime)
    entry = result.entry
    if as_json:
        typer.echo(json.dumps({"output": str(result.target.resolve()), **_jsonable(entry)}, indent=2))
        return
    types = ", ".join(f"{name} ×{count}" for name, count in entry["tensor_types"].items())
    typer.echo(f"wrote    {result.target} ({entry['size_bytes'] / 2**20:.1f} MiB; {types}) in {entry['write_seconds']} s")
    if entry["fallbacks"]:
        typer.echo(f"fallback {len(entry['fallbacks'])} tensors: {entry['fallbacks'][0]}")
    typer.echo(f"check    in {entry['runtime']}, {entry['items']} held-out items: top-1 agreement {entry['top1_agreement']:.2%} on "
               f"{entry['answer_positions']} answer tokens ({_percent_or_none(entry['top1_agreement_within_ties'])} counting the "
               f"{entry['near_tie_flips']} near-tie flips as agreeing; {entry['top1_agreement_all_positions']:.2%} on all "
               f"{entry['positions']} tokens), mean KL {_number_or_none(entry['answer_kl'])} on answer tokens ({entry['kl']:.3g} on all), |Δlogit| max {entry['max_abs_logit_diff']:.3g} "
               f"mean {entry['mean_abs_logit_diff']:.3g}")
    from kbit.core.measure.sample_size import rate_text, small_sample_warning, too_few

    items = entry["items"]
    typer.echo(f"         held-out exact match {rate_text(entry['source']['exact_match'], items)} ({entry['source']['model']}) → "
               f"{rate_text(entry['exact_match'], items)} (this file); passed the {entry['type']} gate: {_gate_text(entry['gate'], items)}")
    if too_few(items):
        typer.echo(f"warning  {small_sample_warning(items, '; use --limit 30 or more, or train with --held-out 30 if the run holds out fewer')}")


def _number_or_none(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _percent_or_none(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _gate_text(gate: dict, items: int) -> str:
    from kbit.core.export.check import Gate

    return Gate(**gate).describe(items)


@app.command("push")
def push_command(
    path: Annotated[str, typer.Argument(help="A kbit run directory.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repository to create or update, ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    what: Annotated[Optional[str], typer.Option("--what", help="Comma list of adapter, merged, gguf, quantized (default: all present).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files that would be uploaded; upload nothing.")] = False,
) -> None:
    """Upload a run's artifacts to the Hugging Face Hub (one folder: at the repository root; several: as subfolders)."""
    from pathlib import Path

    from kbit.core.push import plan_push, push

    plan = plan_push(Path(path), repo_id, what)
    if dry_run:
        typer.echo(f"would upload {len(plan.files)} files ({plan.size_bytes / 2**20:.1f} MiB) to "
                   f"{'private ' if private else ''}{plan.repo_id}:")
        for local, remote in plan.files:
            typer.echo(printable(f"  {remote}  ←  {local}"))
    if plan.left_home:
        typer.echo(printable(f"left home, as kbit did not write them: {', '.join(plan.left_home)}"))
    if dry_run:
        return
    url = push(plan, private=private)
    typer.echo(f"uploaded {len(plan.files)} files ({plan.size_bytes / 2**20:.1f} MiB) to {url}")


@app.command("compare")
def compare_command(
    methods: Annotated[Optional[str], typer.Option("--methods", help="Comma-separated methods, e.g. lora,qlora,gptq (default: every ready method).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory, .gguf file or hub id (default: the embedded SmolLM2 135M Instruct).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="arith (default), openmath, squad, a file or a hub dataset.")] = None,
    columns: Annotated[Optional[str], typer.Option("--columns", help="Column mapping: prompt=COL, completion=COL and answer=COL (optional), comma-separated.")] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Optimizer steps per method (default 20).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Micro-batch size per method (default 8).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Data split and training seed (default 0).")] = None,
    max_examples: Annotated[Optional[int], typer.Option("--max-examples", help="Use at most N dataset rows.")] = None,
    held_out: Annotated[Optional[str], typer.Option("--held-out", help="Held-out examples, as for kbit train: a count, a fraction or a file of them.")] = None,
    turns: Annotated[Optional[str], typer.Option("--turns", help="Assistant answers of a conversation to train, as for kbit train: last or all.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", "--learning-rate", help="Peak learning rate of every method (default: each method's own, else 2e-3).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Held-out items each variant is scored on (default 50).")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="key=value, given to every method that has the option (repeatable); the report notes where it was skipped.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-O", help="Comparison folder (default compare/MODEL-DATASET-Nsteps, -lrX with --lr); an earlier comparison there is continued.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Retrain runs in --out trained with other settings (never a folder of files kbit did not write).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout instead of the table.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train each method with the same budget and data, evaluate every variant, write one report.

    Finished runs in the comparison folder are reused, unfinished ones resumed. A method that fails is reported in its row and the others go on; the exit code is 1 only when every method failed (2: bad input, nothing written).
    """
    _console(verbose, quiet)
    _load_libraries("kbit.core.compare.pipeline")
    from kbit.core.compare.pipeline import run_compare
    from kbit.core.compare.plan import build_compare_config
    from kbit.core.compare.render import print_table
    from kbit.core.errors import AllMethodsFailed
    from kbit.core.contract.options import parse_assignments

    settings = build_compare_config(
        methods=methods, model=model, dataset=dataset, columns=columns, max_steps=max_steps, batch_size=batch_size,
        seed=seed, max_examples=max_examples, held_out=held_out, turns=turns, lr=lr, limit=limit, options=parse_assignments(option or []), out=out,
        overwrite=overwrite,
    )
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; keep stdout for the result
        result = run_compare(settings, progress=lambda line: logging.getLogger("kbit").info("compare: %s", line))
    if as_json:
        typer.echo(json.dumps(_report_json(result.out_dir), indent=2))
    else:
        print_table(result.report, result.out_dir)
    if result.every_method_failed:
        reasons = "; ".join(f"{m['method']}: {m['reason']}" for m in result.failed)
        raise AllMethodsFailed(f"every method failed ({reasons}); see {result.out_dir / 'report.md'}")


@app.command("new-method")
def new_method_command(
    name: Annotated[str, typer.Argument(help="The method's name, as users will select it (e.g. my-int4).")],
    directory: Annotated[Optional[str], typer.Option("--dir", help="Where to write the distribution (default ./kbit-NAME).")] = None,
) -> None:
    """Write a ready method plugin: pyproject with the entry point, every hook, and contract tests."""
    from pathlib import Path

    from kbit.core.scaffold import write_method

    target = write_method(name, Path(directory) if directory else None)
    typer.echo(f"wrote {target}: pip install -e {target} && pytest {target}, then kbit train --method {name}")


def _report_json(out_dir) -> dict:
    """What ``--json`` prints for a report: ``report.json`` as written, with the folder's absolute path as ``out_dir``."""
    return {"out_dir": str(out_dir.resolve()), **_jsonable(json.loads((out_dir / "report.json").read_text(encoding="utf-8")))}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's ``ClickException`` as typer raises it: typer >= 0.17 bundles its own copy of click."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _help_command(exc: BaseException) -> str:
    """The help to read for a usage error: of the command that refused the arguments, else ``kbit --help``.

    Taken from click's context, never from the arguments: ``kbit frobnicate`` has no help of its own.
    """
    names = []
    context = getattr(exc, "ctx", None)
    while context is not None and context.parent is not None:  # the root's name is the program's file
        names.append(context.info_name)
        context = context.parent
    return " ".join(["kbit", *reversed(names), "--help"])


def _disk_message(exc: OSError, training: bool) -> str:
    """One line for an ``OSError`` that reached the top: what failed, where, and what to do."""
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{exc.strerror or exc}{where}; free space on that disk or write the output elsewhere, "
                "then run the command again" + (" (kbit train --resume RUN continues the run)" if training else ""))
    return f"{exc.strerror or exc}{where}; check the disk, its free space and permissions"


# One-value options people give twice hoping both count (every command that has it spells it so), and what to do
# instead. Click keeps the last value silently: an override for --max-steps and the like, but for --dataset the
# first file's rows are dropped.
REPEAT_HINTS = {("--dataset", "-d"): "kbit reads one dataset: join the files into one (e.g. cat a.jsonl b.jsonl > all.jsonl)",
                ("--held-out",): "kbit scores one held-out set: join the files into one (e.g. cat a.jsonl b.jsonl > all.jsonl), "
                                 "or evaluate once per file"}


def _refuse_repeated_options(args: list[str]) -> None:
    """ConfigError for an option of ``REPEAT_HINTS`` given twice (read from the words before ``--``)."""
    words = args[:args.index("--")] if "--" in args else args
    for opts, hint in REPEAT_HINTS.items():
        values = [words[i + 1] for i, word in enumerate(words[:-1]) if word in opts]
        values += [word.partition("=")[2] for word in words if word.startswith(f"{opts[0]}=")]
        if len(values) > 1:
            raise ConfigError(f"{opts[0]} is given {len(values)} times ({', '.join(values)}); {hint}")


def _run_app(args: list[str], program: bool) -> object:
    """Run the typer app under the stop handlers of ``kbit.core.system.signals`` (Ctrl-C, SIGTERM, SIGHUP).

    Called in-process (tests, other programs), kbit leaves logging and signals as they were. As the
    program itself, once stopped by a signal it keeps the handlers: the process is on its way out and a
    repeated Ctrl-C must not break into its exit (interpreter shutdown) with a traceback.
    """
    from kbit.core.system.console import teardown_console
    from kbit.core.system.signals import StopHandlers

    global _as_program
    _as_program = program
    handlers = StopHandlers()
    handlers.install()
    try:
        return app(args=args, standalone_mode=False)
    finally:
        _as_program = False
        teardown_console()
        if not (program and handlers.stopped):
            handlers.restore()


def _exiting_on_a_signal(program: bool) -> None:
    """kbit, the program, exits on a stop signal: a repeat must not break into the exit (called
    in-process, it leaves the caller's signals alone)."""
    if program:
        from kbit.core.system.signals import ignore_stops

        ignore_stops()


def printable(text: str) -> str:
    """``text`` on one line, as text: a name in it (a file name, a model's metadata) may hold line breaks, which become
    spaces, and terminal controls (an escape sequence sets a title or a link), which are escaped."""
    line = re.sub(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*", " ", text)
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in line)


def _say(message: str) -> None:
    """An error on one line of stderr (``printable``)."""
    typer.echo(printable(message), err=True)


def _traceback_and_exit(code: int) -> None:
    """``--debug``: the traceback of the error being handled, then the exit code the error has without it."""
    import traceback

    traceback.print_exc()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: ``argv``, else the program's arguments (``sys.argv``: kbit is the program).
    Every failure ends in one line on stderr and a non-zero exit (traceback with --debug).

    ``KbitError`` (bad input or environment) and usage errors exit 2; Ctrl-C exits 130, SIGTERM 143
    and SIGHUP 129, after the running command has marked its output interrupted and released its lock; an
    ``OSError`` (a full or read-only disk) exits 2 naming the path; anything else is a bug: exit 1.
    ``--debug`` prints the traceback instead of the line and exits with the same code.
    """
    from kbit.core.errors import Terminated

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if debug:  # kbit's own flag wherever it stands: after the command too (kbit train --debug …)
        args = ["--debug", *(arg for arg in args if arg != "--debug")]
    usage_errors = _usage_error_types()
    try:
        _refuse_repeated_options(args)
        code = _run_app(args, program=argv is None)
    except KbitError as exc:
        if debug:
            _traceback_and_exit(exc.exit_code)
        _say(f"kbit: error: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _exiting_on_a_signal(program=argv is None)
        typer.echo("kbit: interrupted", err=True)
        sys.exit(130)
    except Terminated as exc:
        _exiting_on_a_signal(program=argv is None)
        typer.echo(f"kbit: terminated by signal {exc.signal_number}", err=True)
        sys.exit(128 + exc.signal_number)
    except usage_errors as exc:
        if debug:
            _traceback_and_exit(exc.exit_code)
        _say(f"kbit: error: {exc.format_message()}; see '{_help_command(exc)}'")
        sys.exit(exc.exit_code)
    except OSError as exc:
        if debug:
            _traceback_and_exit(2)
        _say(f"kbit: error: {_disk_message(exc, training='train' in args[:1])}")
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        if type(exc).__module__.startswith("jinja2"):  # a model's chat template (its file is input, like a dataset)
            _say(f"kbit: error: the model's chat template cannot be rendered ({type(exc).__name__}: {exc}); fix "
                 "or replace its chat_template")
            sys.exit(2)
        _say(f"kbit: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into this return code
        _exiting_on_a_signal(program=argv is None)
        typer.echo("kbit: interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)
