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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kbit.core.runs.record import RunRecord
from kbit.core.runs.folder import write_json_atomic, write_text_atomic

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
    "gguf": ("quantized", "gguf", "the merged model as GGUF files for llama.cpp, Ollama and LM Studio",
             "```bash\nllama-cli -m FILE.gguf -cnv   # or: ollama create NAME -f Modelfile with FROM ./FILE.gguf\n```"),
}


def base_model_id(record: Mapping[str, Any]) -> str:
    """The base model's hub id as recorded when it was resolved; its name when no id is known.

    Runs recorded before kbit kept the hub id find it beside their converted GGUF base.
    """
    from kbit.core.model.sources import recorded_source

    base = record.get("base_model") or {}
    hub_id = base.get("hub_id") or (recorded_source(Path(str(base["path"]))).get("hub_id") if base.get("path") else "")
    return str(hub_id or base.get("name") or "")


def base_license(record: Mapping[str, Any]) -> str:
    """The base model's license as recorded (or beside its converted GGUF), "" when unknown."""
    from kbit.core.model.sources import recorded_source

    base = record.get("base_model") or {}
    return str(base.get("license") or (recorded_source(Path(str(base["path"]))).get("license") if base.get("path") else "") or "")


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
    cards render the record's JSON form (what kbit.json holds), field by field.
    """
    run_dir = Path(run_dir)
    record = run.to_dict()
    written = []
    for folder in ARTIFACTS:
        directory = run_dir / folder
        if directory.is_dir() and any(p.name != CARD for p in directory.iterdir()):
            if folder == "adapter" and (directory / "adapter_config.json").is_file():
                name_base_in_adapter(directory, base_model_id(record))
            write_text_atomic(directory / CARD, artifact_card(record, folder))
            written.append(directory / CARD)
    write_text_atomic(run_dir / CARD, run_card(record, [p.parent.name for p in written]))
    return [run_dir / CARD, *written]


def artifact_card(record: Mapping[str, Any], folder: str) -> str:
    """The model card text of one artifact folder of the run described by ``record``."""
    relation, library, what, load = ARTIFACTS[folder]
    spec = record.get("spec") or {}
    quantize = record.get("quantize") or {}
    merge = record.get("merge") or {}
    what = what.format(dtype=merge.get("dtype", ""), method=quantize.get("method", ""), format=quantize.get("format", ""))
    tags = _tags(record) + {"quantized": [quantize.get("method", ""), quantize.get("format", "")],
                            "gguf": ["gguf", "llama.cpp"]}.get(folder, [])
    results = _results(record, folder)
    body = [f"# {record.get('name', '')} — {folder}", "",
            f"{what[0].upper()}{what[1:]}: a supervised fine-tune of [`{base_model_id(record)}`]"
            f"({_hub_url(base_model_id(record))}) on `{(record.get('dataset') or {}).get('name', '')}` with kbit's "
            f"`{spec.get('method', '')}` method.", "", "## Use", "",
            load.replace("{base}", base_model_id(record)), ""]
    if folder == "gguf":
        body += _gguf_table(record)
    body += _settings(record) + _results_table(results)
    return _render(record, relation, library, tags, results, body)


def run_card(record: Mapping[str, Any], folders: list[str]) -> str:
    """The card of the run directory: what the run produced and where."""
    spec = record.get("spec") or {}
    results = _results(record, "adapter")
    body = [f"# {record.get('name', '')}", "",
            f"Supervised fine-tune of [`{base_model_id(record)}`]({_hub_url(base_model_id(record))}) on "
            f"`{(record.get('dataset') or {}).get('name', '')}` with kbit's `{spec.get('method', '')}` method "
            f"({record.get('method_summary', '')}).", "", "| folder | contents |", "|---|---|"]
    body += [f"| `{f}/` | {ARTIFACTS[f][2].format(dtype=(record.get('merge') or {}).get('dtype', ''), method=(record.get('quantize') or {}).get('method', ''), format=(record.get('quantize') or {}).get('format', ''))} |"
             for f in folders]
    body += ["", "Each folder has its own card; full settings are in `kbit.json`.", ""]
    body += _settings(record) + _results_table(results)
    return _render(record, "adapter", "peft", _tags(record), results, body)


def _render(record: Mapping[str, Any], relation: str, library: str, tags: list[str], results: list[tuple[str, float]],
            body: list[str]) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = record.get("dataset") or {}
    source = str(dataset.get("source") or "")
    held_out = f"{dataset.get('name', '')} (held-out)"
    data = ModelCardData(
        base_model=base_model_id(record) or None,
        base_model_relation=relation,
        library_name=library,
        pipeline_tag=PIPELINE_TAG,
        license=base_license(record) or None,
        datasets=[source.removeprefix("hub:")] if source.startswith("hub:") else None,
        tags=[t for t in dict.fromkeys(tags) if t],
        model_name=str(record.get("name") or "") if results else None,
        eval_results=[EvalResult(task_type=PIPELINE_TAG, dataset_type=str(dataset.get("name", "")), dataset_name=held_out,
                                 metric_type="exact_match", metric_value=value, metric_name=label)
                      for label, value in results] or None,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _tags(record: Mapping[str, Any]) -> list[str]:
    spec = record.get("spec") or {}
    adapter = (spec.get("adapter") or (spec.get("extras") or {}).get("adapter") or {})
    tags = ["kbit", spec.get("method", ""), "sft", adapter.get("peft_type", "")]
    if spec.get("weights_bits"):
        tags.append(f"{spec['weights_bits']}-bit")
    return tags


def _results(record: Mapping[str, Any], folder: str) -> list[tuple[str, float]]:
    """(label, held-out exact match) pairs kbit measured for this folder's model."""
    metrics = record.get("metrics") or {}
    exports = [e for e in record.get("exports") or [] if isinstance(e, Mapping)]
    if folder == "adapter" and isinstance(metrics.get("exact_match_after"), (int, float)):
        return [("held-out exact match (adapter)", float(metrics["exact_match_after"]))]
    if folder == "merged":
        measured = [e["source"]["exact_match"] for e in exports if isinstance(e.get("source"), Mapping)
                    and isinstance(e["source"].get("exact_match"), (int, float))]
        return [("held-out exact match (merged)", float(measured[-1]))] if measured else []
    if folder == "gguf":
        return [(f"held-out exact match ({e['type']})", float(e["exact_match"])) for e in exports
                if isinstance(e.get("exact_match"), (int, float))]
    return []


def _settings(record: Mapping[str, Any]) -> list[str]:
    spec = record.get("spec") or {}
    adapter = (spec.get("adapter") or (spec.get("extras") or {}).get("adapter") or {})
    metrics = record.get("metrics") or {}
    merge = record.get("merge") or {}
    return ["## Training", "", "| setting | value |", "|---|---|",
            f"| adapter | {adapter.get('peft_type')} r={adapter.get('r')} alpha={adapter.get('lora_alpha')} |",
            f"| weights bits during training | {spec.get('weights_bits') or 'full precision'} |",
            f"| steps | {(record.get('train') or {}).get('steps')} |",
            f"| held-out exact match before → after | {metrics.get('exact_match_before')} → {metrics.get('exact_match_after')} |",
            f"| merge | {merge.get('action', 'none')} {merge.get('base', '')} {merge.get('dtype', '')} |",
            f"| merge max abs logit diff | {merge.get('max_abs_logit_diff', 'n/a')} |", ""]


def _results_table(results: list[tuple[str, float]]) -> list[str]:
    if not results:
        return []
    return ["## Results", "", "| measured by kbit | value |", "|---|---|",
            *[f"| {label} | {value:.1%} |" for label, value in results], ""]


def _gguf_table(record: Mapping[str, Any]) -> list[str]:
    exports = [e for e in record.get("exports") or [] if isinstance(e, Mapping)]
    if not exports:
        return []
    lines = ["## Files", "",
             "Checked against the merged model on held-out prompts when written (logits of the file as "
             "transformers loads it):", "",
             "| file | type | size | top-1 agreement (answer tokens) | max / mean \\|Δlogit\\| | exact match (merged → file) |",
             "|---|---|---|---|---|---|"]
    for e in exports:
        source = e.get("source") or {}
        lines.append(f"| `{Path(str(e.get('file', ''))).name}` | {e.get('type')} | {e.get('size_bytes', 0) / 2**20:.1f} MiB | "
                     f"{e.get('top1_agreement', 0):.2%} | {e.get('max_abs_logit_diff', 0):.3g} / {e.get('mean_abs_logit_diff', 0):.3g} | "
                     f"{source.get('exact_match', 0):.0%} → {e.get('exact_match', 0):.0%} |")
    return lines + [""]


def _hub_url(model_id: str) -> str:
    return f"https://huggingface.co/{model_id}" if model_id.count("/") == 1 else "#"
