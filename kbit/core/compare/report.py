"""The comparison report: its content (``report.json``) and writing it with the markdown and plot.

``report.json`` (kind "compare") holds the settings, the base model's row, one entry per method
(status, whether its run was trained, resumed or reused, the reason it failed, the options it
took and skipped, its run's train and quantize time, one row per evaluated variant) and ``rows``,
the same rows flattened for programs. Every file is replaced atomically; the report is rewritten
after each method, so it always shows how far the comparison got.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from kbit.core.runs import stamps as meta
from kbit.core.compare.plan import KIND, ComparePlan
from kbit.core.runs.record import RunRecord
from kbit.core.runs.folder import atomic_file, write_json_atomic

SCHEMA_VERSION = 1
METRICS = ("items", "loss", "perplexity", "exact_match", "f1", "bits_per_weight", "memory_bytes", "disk_bytes",
           "tokens_per_s")


def new_report(plan: ComparePlan) -> dict[str, Any]:
    """The report of a comparison that is starting: every method pending."""
    config = plan.config
    return {
        "kind": KIND,
        "status": "running",
        "error": None,
        "created": meta.now(),
        "settings": {
            "methods": [m.name for m in plan.methods],
            "model": config.model,
            "model_name": plan.model_name,
            "dataset": plan.dataset,
            "columns": config.columns,
            "max_steps": config.max_steps,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "max_examples": config.max_examples,
            "lr": config.lr,
            "limit": config.limit,
            "options": dict(config.options),
        },
        "command": command_line(plan),
        "base": {"status": "pending"},
        "methods": [{"method": m.name, "status": "pending", "run": f"runs/{m.name}", "rows": []} for m in plan.methods],
        "versions": meta.package_versions(),
    }


def command_line(plan: ComparePlan) -> str:
    """The ``kbit compare`` command that reproduces this comparison."""
    config = plan.config
    parts = ["kbit", "compare", "--methods", ",".join(m.name for m in plan.methods)]
    for flag, value, default in (("--model", config.model, "default"), ("--dataset", config.dataset, "arith"),
                                 ("--columns", config.columns, None), ("--max-steps", config.max_steps, None),
                                 ("--batch-size", config.batch_size, 8), ("--seed", config.seed, 0),
                                 ("--max-examples", config.max_examples, None), ("--held-out", config.held_out, None),
                                 ("--turns", config.turns, "last"), ("--lr", config.lr, None),
                                 ("--limit", config.limit, None)):
        if value is not None and value != default:
            parts += [flag, str(value)]
    for key, value in config.options.items():
        parts += ["-o", f"{key}={value}"]
    return shlex.join(parts)  # a name such as x$(cmd).csv is not run by whoever pastes the line


def set_method(report: dict[str, Any], entry: dict[str, Any]) -> None:
    report["methods"] = [entry if m["method"] == entry["method"] else m for m in report["methods"]]


def run_figures(record: RunRecord) -> dict[str, Any]:
    """What a method's run recorded: its name, steps, last training loss, train and quantize seconds,
    and its training steps' speed (tokens/s and MFU, ``kbit.core.measure.throughput``).

    ``train_s`` is the run's wall time without quantization (loading, training, merge and merge
    check); for a resumed run it covers the part after the resume only.
    """
    wall = record.wall_time_s
    quantize_s = record.quantize.seconds if record.quantize is not None else None
    history = [h for h in record.loss_history if "loss" in h]  # entries may hold only eval_loss
    return {
        "run_name": record.name,
        "steps": record.train.steps,
        "train_loss": history[-1]["loss"] if history else None,
        "train_s": None if wall is None else round(wall - (quantize_s or 0), 1),
        "quantize_s": quantize_s,
        "train_tokens_per_s": record.train.tokens_per_s,
        "train_mfu": record.train.mfu,
    }


def flat_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated variant (base first) and one per method without results, for programs."""
    base = report.get("base", {})
    rows = [{"method": "base", "status": "finished", "action": "reused" if base.get("reused") else "evaluated",
             **_metrics(r)} for r in base.get("rows", [])]
    for entry in report["methods"]:
        common = {"method": entry["method"], "status": entry["status"], "action": entry.get("action"),
                  "train_s": entry.get("train_s"), "quantize_s": entry.get("quantize_s"), "run": entry.get("run"),
                  "train_tokens_per_s": entry.get("train_tokens_per_s"), "train_mfu": entry.get("train_mfu")}
        if entry["rows"]:
            rows += [{**common, **_metrics(r)} for r in entry["rows"]]
        else:
            rows.append({**common, "variant": None, "reason": entry.get("reason")})
    return rows


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {"variant": row["variant"], "model": row.get("model"), "path": row.get("path"),
            **{k: row[k] for k in METRICS if k in row}}


def write(out_dir: Path, report: dict[str, Any], with_plot: bool = True) -> None:
    """Write ``report.json``, ``report.md`` and (``with_plot``) ``report.png`` into ``out_dir``, each atomically."""
    from kbit.core.compare.render import markdown, plot

    report["updated"] = meta.now()
    report["rows"] = flat_rows(report)
    if with_plot:
        with atomic_file(out_dir / "report.png") as staging:
            plot(staging, report)
    with atomic_file(out_dir / "report.md") as staging:
        staging.write_text(markdown(report), encoding="utf-8")
    write_json_atomic(out_dir / "report.json", {"schema_version": SCHEMA_VERSION, **report})


def _read(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(out_dir) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == KIND else None


def previous_methods(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The method entries of the comparison previously written in ``out_dir``, by method name."""
    data = _read(out_dir) or {}
    entries = data.get("methods") if isinstance(data.get("methods"), list) else []
    return {e["method"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("method"), str)}


def previous_base(out_dir: Path) -> dict[str, Any] | None:
    base = (_read(out_dir) or {}).get("base")
    return base if isinstance(base, dict) else None


def read_eval_rows(eval_dir: Path) -> list[dict[str, Any]] | None:
    """The rows of the ``kbit eval`` report in ``eval_dir``, or None when there is none to read."""
    try:
        data = json.loads((Path(eval_dir) / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "eval" or not isinstance(data.get("rows"), list):
        return None
    return data["rows"] or None
