"""Hub-ready run directories: a model card per artifact folder, and an adapter that names its base.

Every artifact folder of a run (``adapter/``, ``merged/``, ``quantized/``, ``gguf/``) gets its own
``README.md``, so each can be pushed as a repository of its own, and the run root keeps the card of
the whole run. Cards are written with ``huggingface_hub``'s ``ModelCard``/``ModelCardData`` (the Hub's
own schema for the front matter): ``base_model`` is the base's hub id (its name when no id is
known), ``base_model_relation`` says how the folder derives from it, ``license`` comes from the base,
``datasets`` is set for hub datasets, and held-out results measured by kbit become ``model-index``;
a figure kbit did not measure is never written.

``adapter_config.json`` names the base by its hub id rather than by the path of the training
machine's model cache, so ``PeftModel.from_pretrained`` works wherever the base is available.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from kbit.core.measure.sample_size import rate_text, too_few
from kbit.core.runs.record import RunRecord
from kbit.core.runs.folder import write_json_atomic, write_text_atomic
from kbit.core.system.tables import code_text, fenced, markdown_row, markdown_text

CARD = "README.md"
PIPELINE_TAG = "text-generation"
# folder → (base_model_relation, library_name, what it is, how to load it)
ARTIFACTS: dict[str, tuple[str, str, str, str]] = {
    "adapter": ("adapter", "peft", "the trained adapter",
                "```python\nfrom peft import AutoPeftModelForCausalLM\n"
                "model = AutoPeftModelForCausalLM.from_pretrained(\"REPO\")  # loads {base} and applies the adapter\n```"),
    "merged": ("merge", "transformers", "the adapter merged into the base weights ({dtype})",
               "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
               "model = AutoModelForCausalLM.from_pretrained(\"REPO\")\ntokenizer = AutoTokenizer.from_pretrained(\"REPO\")\n```"),
    "quantized": ("quantized", "transformers", "the merged model quantized after training with {method} ({format})",
                  "```python\nfrom transformers import AutoModelForCausalLM\n"
                  "model = AutoModelForCausalLM.from_pretrained(\"REPO\")  # compressed-tensors; vLLM serves it as is\n```"),
    "gguf": ("quantized", "gguf", "the fine-tuned model as GGUF files for llama.cpp, Ollama and LM Studio",
             "```bash\nllama-cli -m FILE.gguf -cnv   # Ollama: a Modelfile with FROM ./FILE.gguf\n```"),
}


def base_model_id(record: RunRecord) -> str:
    """The base model's hub id as recorded when it was resolved; its name (on one line, no backticks) when no id is
    known."""
    return _hub_id(record) or _one_line(record.base_model.name or "")


def _hub_id(record: RunRecord) -> str:
    """The base's hub id as recorded (runs recorded before kbit kept it: beside their converted GGUF base), "" when
    none is or what is recorded is not a hub id (``kbit.json`` and a GGUF file's metadata are anyone's text)."""
    from kbit.core.model.sources import is_hub_id

    value = str(record.base_model.hub_id or _beside_base(record, "hub_id") or "")
    return value if is_hub_id(value) else ""


def base_license(record: RunRecord) -> str:
    """The base model's license as recorded (or beside its converted GGUF), "" when unknown or not a license id."""
    from kbit.core.model.sources import is_license_id

    value = str(record.base_model.license or _beside_base(record, "license") or "")
    return value if is_license_id(value) else ""


def _one_line(text: str) -> str:
    """A name from the user's files or a model's metadata, safe inside a markdown code span and table cell
    (``code_text``, its pipes escaped)."""
    return code_text(text).replace("|", "\\|")


def _beside_base(record: RunRecord, key: str) -> Any:
    from kbit.core.model.sources import recorded_source

    path = record.base_model.path
    return recorded_source(Path(path), (key,)).get(key) if path else None


def _loadable_base(record: RunRecord) -> str:
    """What ``AutoPeftModelForCausalLM`` loads the adapter's base from: its hub id, else the local folder it
    trained on (as PEFT itself writes it), else its name."""
    base = record.base_model
    return _hub_id(record) or str(base.path or base.name or "")


def name_base_in_adapter(adapter_dir: Path, base_id: str) -> None:
    """Point ``adapter_config.json``'s ``base_model_name_or_path`` at ``base_id`` (PEFT writes the local path)."""
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if base_id and config.get("base_model_name_or_path") != base_id:
        config["base_model_name_or_path"] = base_id
        write_json_atomic(path, config)


def write_cards(run_dir: Path, run: RunRecord) -> list[Path]:
    """Write the run's card and one per artifact folder present; returns the cards written.

    Also names the hub id in ``adapter/adapter_config.json`` (runs written before kbit did so). The
    cards render the record's fields (what kbit.json holds).
    """
    run_dir = Path(run_dir)
    record, written = run, []
    for folder in ARTIFACTS:
        directory = run_dir / folder
        if directory.is_dir() and any(p.name != CARD for p in directory.iterdir()):
            if folder == "adapter" and (directory / "adapter_config.json").is_file():
                name_base_in_adapter(directory, _loadable_base(record))
            write_text_atomic(directory / CARD, artifact_card(record, folder))
            written.append(directory / CARD)
    write_text_atomic(run_dir / CARD, run_card(record, [p.parent.name for p in written]))
    return [run_dir / CARD, *written]


def artifact_card(record: RunRecord, folder: str) -> str:
    """The model card text of one artifact folder of the run described by ``record``."""
    relation, library, what, load = ARTIFACTS[folder]
    what = _what(record, what)
    quantize = record.quantize
    tags = _tags(record, folder) + {"quantized": [quantize.method or "", quantize.format or ""] if quantize else [],
                                    "gguf": ["gguf", "llama.cpp"]}.get(folder, [])
    results = _results(record, folder)
    body = [f"# {markdown_text(record.name)} — {folder}", "",
            f"{what[0].upper()}{what[1:]}: a supervised fine-tune of {_base_link(record)}"
            f" on `{_one_line(record.dataset.name or '')}` with kbit's "
            f"`{_method(record)}` method.", "", "## Use", "",
            load.replace("{base}", base_model_id(record)), ""]
    if folder == "gguf":
        body += _gguf_table(record)
    if folder == "adapter" and record.spec is not None and (record.spec.weights_bits or 16) < 16:
        body += [f"The adapter trained on the base as kbit's `{_method(record)}` method quantizes it "
                 f"({record.spec.weights_bits}-bit), and computes the fine-tuned model on that base: on the float base, "
                 "as above, its output differs slightly. The merged model is the one kbit checked; `kbit eval RUN "
                 "--variant adapter` loads the adapter on its quantized base.", ""]
        body += _quantized_base_code(record)
    if folder in ("adapter", "merged"):
        body += _gguf_base_note(record)
    body += _settings(record) + _results_table(results)
    return _render(record, relation, library, tags, results, body)


def _quantized_base_code(record: RunRecord) -> list[str]:
    """Code that loads the adapter on its base quantized as the run's method does, where the method's quantization
    config is a transformers class (bitsandbytes', torchao's …); nothing where kbit quantizes the base itself or
    the method is not installed here."""
    try:
        import transformers

        from kbit.core.methods.registry import get_method

        config = get_method(_method(record)).build_quant_config(record.spec)
    except Exception:  # noqa: BLE001 - a card is written whatever the method's state; the sentence above stands
        return []
    if config is None or getattr(transformers, type(config).__name__, None) is not type(config):
        return []
    name = type(config).__name__
    arguments = ", ".join(f"{key}={value!r}" for key, value in config.to_diff_dict().items()
                          if key not in ("quant_method", "_load_in_4bit", "_load_in_8bit"))
    dtype = record.spec.training.compute_dtype if record.spec.training is not None else "float32"
    return ["```python", "import torch", "from peft import PeftModel", f"from transformers import AutoModelForCausalLM, {name}",
            f"base = AutoModelForCausalLM.from_pretrained({json.dumps(_loadable_base(record))}, dtype=torch.{dtype},  # as trained",
            f"                                            quantization_config={name}({arguments}))",
            "model = PeftModel.from_pretrained(base, \"REPO\")", "```", ""]


def _gguf_base_note(record: RunRecord) -> list[str]:
    """Where the base came from a GGUF file of a hub model: that its weights are the file's, not the hub's."""
    from kbit.core.model.sources import recorded_source

    path = record.base_model.path
    beside = recorded_source(Path(path), ("gguf", "hub_id")) if path else {}
    gguf, hub_id = beside.get("gguf"), _hub_id(record)
    if not gguf or not hub_id:  # without a hub id the card names the file itself
        return []
    return [f"The base kbit trained on is the GGUF file `{_one_line(Path(gguf).name)}`, not `{hub_id}`'s own weights: the two "
            "differ by that file's rounding. `kbit eval RUN` loads the base the run trained on.", ""]


def run_card(record: RunRecord, folders: list[str]) -> str:
    """The card of the run directory: what the run produced and where, and each variant's score."""
    results = [(f"held-out exact match ({name})", float(v.exact_match), v.items or 0)
               for name, v in record.metrics.variants.items() if v.exact_match is not None] or _results(record, "adapter")
    body = [f"# {markdown_text(record.name)}", "",
            f"Supervised fine-tune of {_base_link(record)} on "
            f"`{_one_line(record.dataset.name or '')}` with kbit's `{_method(record)}` method "
            f"({record.method_summary}).", "", "| folder | contents |", "|---|---|"]
    body += [f"| `{f}/` | {_what(record, ARTIFACTS[f][2])} |" for f in folders]
    body += ["", "Each folder has its own card; full settings are in `kbit.json`.", ""]
    body += _settings(record) + _results_table(results)
    return _render(record, "adapter", "peft", _tags(record, "adapter"), results, body)


def _what(record: RunRecord, text: str) -> str:
    """An artifact's description with the merge's dtype and the quantization's method and format filled in."""
    merge, quantize = record.merge, record.quantize
    return text.format(dtype=(merge.dtype if merge else None) or "", method=(quantize.method if quantize else None) or "",
                       format=(quantize.format if quantize else None) or "")


def _method(record: RunRecord) -> str:
    return record.spec.method if record.spec is not None else record.method


def _render(record: RunRecord, relation: str, library: str, tags: list[str], results: list[tuple[str, float, int]],
            body: list[str]) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = record.dataset
    source = dataset.source or ""
    held_out = f"{_held_out_name(record)} (held-out)"
    data = ModelCardData(
        base_model=base_model_id(record) or None,
        base_model_relation=relation,
        library_name=library,
        pipeline_tag=PIPELINE_TAG,
        license=base_license(record) or None,
        datasets=[source.removeprefix("hub:")] if source.startswith("hub:") else None,
        tags=[t for t in dict.fromkeys(tags) if t],
        model_name=record.name if results else None,
        eval_results=[EvalResult(task_type=PIPELINE_TAG, dataset_type=dataset.name or "", dataset_name=held_out,
                                 metric_type="exact_match", metric_value=value, metric_name=label)
                      for label, value, _ in results] or None,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _tags(record: RunRecord, folder: str) -> list[str]:
    spec = record.spec
    adapter = spec.adapter if spec is not None else None
    tags = ["kbit", _method(record), "sft", adapter.peft_type if adapter is not None else ""]
    # a bit width tags the weights a folder holds: the adapter's base, the quantized model's; merged/ and a GGUF
    # (typed by its file) hold other weights than the training base's
    quantize = record.quantize
    bits = {"adapter": spec.weights_bits if spec is not None else None,
            "quantized": (quantize.spec or {}).get("weights_bits") if quantize else None}.get(folder)
    if bits:
        tags.append(f"{bits}-bit")
    return tags


def _results(record: RunRecord, folder: str) -> list[tuple[str, float, int]]:
    """(label, held-out exact match, items) kbit measured for this folder's model."""
    after = record.metrics.after
    if folder == "adapter" and after is not None and after.exact_match is not None:
        return [("held-out exact match (adapter)", float(after.exact_match), after.items)]
    if folder == "merged":
        scored = record.metrics.variants.get("merged")
        if scored is not None and scored.exact_match is not None:  # merged/ as saved, scored by the run
            return [("held-out exact match (merged)", float(scored.exact_match), scored.items or 0)]
        measured = [e for e in record.exports if isinstance(e.source.get("exact_match"), (int, float))]
        return [("held-out exact match (merged)", float(measured[-1].source["exact_match"]), measured[-1].items or 0)] \
            if measured else []
    if folder == "gguf":
        return [(f"held-out exact match ({Path(e.file or '').name})", float(e.exact_match), e.items or 0)
                for e in _in_gguf_folder(record) if e.exact_match is not None]
    return []


def _held_out_name(record: RunRecord) -> str:
    """What the held-out items are: the held-out file's name, else the dataset's (a split of it)."""
    file = record.config.held_out_file if record.config is not None else None
    return Path(file).stem if file else record.dataset.name or ""


def _scores_text(scores: Any) -> str:
    return rate_text(scores.exact_match, scores.items) if scores is not None and scores.exact_match is not None else "n/a"


def _in_gguf_folder(record: RunRecord) -> list[Any]:
    """The exports written into the run's ``gguf/`` folder (the card describes that folder; a file exported
    with ``--output`` elsewhere is recorded in the run but is not there)."""
    return [e for e in record.exports if e.file and Path(e.file).parts[:1] == ("gguf",)]


def _settings(record: RunRecord) -> list[str]:
    spec, metrics, merge = record.spec, record.metrics, record.merge
    adapter = spec.adapter if spec is not None else None
    described = (f"{adapter.peft_type} r={adapter.r} alpha={adapter.lora_alpha}"
                 + (" (rsLoRA: scale alpha / sqrt(r))" if adapter.use_rslora else "")) if adapter is not None else "none"
    merged = f"{merge.action} {merge.base or ''} {merge.dtype or ''}" if merge else "none"
    logit_diff = merge.max_abs_logit_diff if merge and merge.max_abs_logit_diff is not None else "n/a"
    config = record.config
    teacher = config.teacher if config is not None else None
    return ["## Training", "", "| setting | value |", "|---|---|",
            f"| adapter | {described} |",
            f"| weights bits during training | {(spec.weights_bits if spec else None) or 'full precision'} |",
            f"| steps | {record.train.steps} |",
            *([f"| distilled from | the merged model of run `{_one_line(Path(teacher).name)}` (`--teacher`) |"] if teacher else []),
            f"| held-out items | {record.dataset.held_out_examples} of `{_one_line(_held_out_name(record))}`"
            f"{' (a file of their own)' if config is not None and config.held_out_file else ''} |",
            *(["| trained answers | every assistant answer of a conversation (`--turns all`) |"]
              if config is not None and config.turns == "all" else []),
            *([f"| optimizer | {config.optim or 'transformers default'}, weight decay {config.weight_decay:g}, "
               f"gradient clipping {config.max_grad_norm:g} |"] if config is not None else []),
            f"| held-out exact match, base → trained adapter (as `{_method(record)}` loads them) | "
            f"{_scores_text(metrics.before)} → {_scores_text(metrics.after)} |",
            f"| merge | {merged} |",
            f"| merge max abs logit diff | {logit_diff} |", ""]


def _results_table(results: list[tuple[str, float, int]]) -> list[str]:
    if not results:
        return []
    return ["## Results", "", "| measured by kbit | value |", "|---|---|",
            *[markdown_row([label, _rate_of(value, items)]) for label, value, items in results], ""]


def _rate_of(value: float, items: int) -> str:
    """A score with the items it is of (a few items are shown as hits/items already)."""
    if not items:
        return f"{value:.1%}"
    return rate_text(value, items) + ("" if too_few(items) else f" of {items} items")


def _gguf_table(record: RunRecord) -> list[str]:
    exports = _in_gguf_folder(record)
    if not exports:
        return []
    lines = ["## Files", "",
             "Each file was checked when written against the model it was made from (the merged model; for a LoRA "
             "adapter file, the trained adapter), on held-out prompts, run in the runtime named:", "",
             "| file | type | size | checked in | top-1 agreement (answer tokens) | mean KL (answer / all tokens) "
             "| max / mean \\|Δlogit\\| | exact match (source → file, items) |",
             "|---|---|---|---|---|---|---|---|"]
    for e in exports:
        lines.append(f"| `{_one_line(Path(e.file or '').name)}` | {e.type} | {(e.size_bytes or 0) / 2**20:.1f} MiB | "
                     f"{e.extra.get('runtime') or 'transformers'} | "
                     f"{e.top1_agreement or 0:.2%} | {_kl_text(e.extra.get('answer_kl'))} / {_kl_text(e.extra.get('kl'))} | "
                     f"{e.max_abs_logit_diff or 0:.3g} / {e.mean_abs_logit_diff or 0:.3g} | "
                     f"{e.source.get('exact_match') or 0:.0%} → {e.exact_match or 0:.0%} ({e.items or 0}) |")
    adapters = [e for e in exports if e.type == "lora"]
    if adapters:  # an adapter file runs on its base file, not alone
        # file names are the user's: on one line and quoted, so that a name such as x$(cmd).gguf is not run by whoever
        # copies the line, and in a fence no backticks in a name can close
        base, adapter = (shlex.quote(" ".join(Path(name or "").name.split()))
                         for name in (adapters[0].base_file or "BASE.gguf", adapters[0].file))
        lines += ["", "A LoRA adapter file runs on the base file it was made for:", "",
                  *fenced(f"llama-cli -m {base} --lora {adapter} -cnv   "
                          f"# Ollama: FROM ./{base} and ADAPTER ./{adapter} in the Modelfile", "bash")]
    return lines + [""]


def _base_link(record: RunRecord) -> str:
    """The base model's name, linked to its Hub page where it has one (a local folder has none)."""
    model_id = _hub_id(record)
    return f"[`{model_id}`](https://huggingface.co/{model_id})" if model_id else f"`{base_model_id(record)}`"


def _kl_text(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "n/a"
