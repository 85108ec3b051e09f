"""The evaluation report: ``report.json``, ``report.md``, ``report.png`` and ``predictions.jsonl``.

One row per model/variant and one column per metric; the best value of each column is marked
(lowest loss, perplexity, memory and bits; highest scores and speed). A score measured on fewer
than ``MIN_ITEMS`` items is shown as hits/items with its 95% interval, is never marked best, and
the report says so. Gaps — variants asked for but not evaluated — are listed under the table.
The folder is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.measure.sample_size import MIN_ITEMS, exact_match_text, too_few
from kbit.core.runs.folder import atomic_directory, write_json_atomic
from kbit.core.system.tables import markdown_row, markdown_text

SCHEMA_VERSION = 1
BEST_MARK = "*"


@attrs.frozen
class Column:
    key: str
    title: str
    better: str  # "min" or "max"
    unit: str = ""

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if self.key in ("exact_match", "f1", "answer_top1", "same_top_p"):
            return f"{100 * value:.1f}%"
        if self.key in ("memory_bytes", "disk_bytes"):
            return f"{value / 2**20:.1f} MiB"
        if self.key in ("tokens_per_s", "forward_tokens_per_s", "prompt_tokens_per_s", "generation_tokens_per_s"):
            return f"{value:.1f}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)


COLUMNS = (
    Column("loss", "loss", "min"),
    Column("perplexity", "perplexity", "min"),
    Column("exact_match", "exact match", "max"),
    Column("f1", "F1", "max"),
    Column("memory_bytes", "memory", "min"),
    Column("disk_bytes", "size on disk", "min"),
    Column("bits_per_weight", "bits/weight", "min"),
    Column("tokens_per_s", "tokens/s", "max"),
    Column("forward_tokens_per_s", "forward tok/s", "max"),
    # a GGUF against its reference model, and llama.cpp's own speed (kbit.core.evaluate.in_llama_cpp)
    Column("answer_top1", "answer top-1", "max"),
    Column("answer_kl", "answer KL", "min"),
    Column("same_top_p", "all-token top-1", "max"),
    Column("prompt_tokens_per_s", "prompt tok/s", "max"),
    Column("generation_tokens_per_s", "gen tok/s", "max"),
)
SCORES = ("exact_match", "f1")
PLOTTED = ("perplexity", "exact_match", "memory_bytes", "bits_per_weight", "tokens_per_s")


def columns_for(rows: Sequence[dict[str, Any]]) -> list[Column]:
    """The metric columns any row has a value for (F1 only for tasks that score it)."""
    return [c for c in COLUMNS if any(_number(r.get(c.key)) is not None for r in rows)]


def best_rows(rows: Sequence[dict[str, Any]], column: Column) -> set[int]:
    """Indices of the rows holding the column's best value among the rows scored on the same dataset (a loss
    on one dataset ranks nothing on another); empty for a dataset where fewer than two rows differ."""
    best: set[int] = set()
    for dataset in dict.fromkeys(r.get("dataset") for r in rows):
        values = {i: _number(r.get(column.key)) for i, r in enumerate(rows) if r.get("dataset") == dataset
                  and not (column.key in SCORES and too_few(r.get("items")))}  # too few items to rank
        values = {i: v for i, v in values.items() if v is not None}
        if len(values) < 2 or len(set(values.values())) == 1:
            continue  # nothing to compare, or every row ties
        target = (min if column.better == "min" else max)(values.values())
        # a value that prints as the best one ties with it: a star on one of two equal-looking cells misleads
        best |= {i for i, v in values.items() if v == target or column.format(v) == column.format(target)}
    return best


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def cell(row: dict[str, Any], column: Column) -> str:
    """A row's value of ``column`` as text; exact match on too few items as hits/items with its interval."""
    if column.key == "exact_match" and too_few(row.get("items")) and row.get("exact_match_hits") is not None:
        return exact_match_text(row["exact_match_hits"], row["items"])
    return column.format(row.get(column.key))


def generation_text(settings: dict[str, Any]) -> str:
    value = settings.get("max_new_tokens")
    if isinstance(value, int):
        return f"at most {value} new tokens (--max-new-tokens)"
    return "until the end-of-turn token, at most the budget of each dataset (below)"


def write_report(out_dir: Path, report: dict[str, Any], predictions: Sequence[dict[str, Any]],
                 exclusive: bool = False) -> Path:
    """Write the four report files into ``out_dir`` atomically (``exclusive``: see ``atomic_directory``); returns
    ``out_dir``."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, exclusive) as staging:
        write_json_atomic(staging / "report.json", {"schema_version": SCHEMA_VERSION, **report})
        (staging / "report.md").write_text(markdown(report), encoding="utf-8")
        with open(staging / "predictions.jsonl", "w", encoding="utf-8") as handle:
            for item in predictions:
                handle.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
        plot(staging / "report.png", report["rows"])
    return out_dir


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    columns = columns_for(rows)
    best = {c.key: best_rows(rows, c) for c in columns}
    header = ["model", "variant", "method", "dataset", "items", *(c.title for c in columns)]
    lines = [
        f"# kbit eval — {report.get('created', '')}",
        "",
        f"Held-out items per model: up to {report['settings']['limit']}; greedy answers "
        f"{generation_text(report['settings'])}; seed {report['settings']['seed']}. "
        f"Best value per column in bold, marked {BEST_MARK} (lowest loss/perplexity/memory/size/bits, highest scores/speed).",
        "",
        *[f"> **Warning:** {markdown_text(w)}" for w in report.get("warnings", [])],
        *([""] if report.get("warnings") else []),
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for i, row in enumerate(rows):
        cells = [row["model"], row["variant"], row.get("method") or "", row.get("dataset", ""), str(row.get("items", ""))]
        for column in columns:
            text = cell(row, column)
            cells.append(f"**{text}{BEST_MARK}**" if i in best[column.key] else text)
        lines.append(markdown_row(cells))
    gaps = report.get("gaps", [])
    lines += ["", "## Gaps", ""]
    if gaps:
        lines += [markdown_text(f"- {g['label']} — {g['variant']}: not evaluated; {g['reason']}") for g in gaps]
    else:
        lines.append("None: every requested variant was evaluated.")
    lines += ["", "## Answers", ""]
    for data in report.get("datasets", []):
        for generation in filter(None, [data.get("generation"), *data.get("other_generation", [])]):
            models = f" for {', '.join(generation['models'])}" if generation.get("models") else ""
            lines.append(markdown_text(f"- {data['name']}: at most {generation['max_new_tokens']} new tokens{models} "
                                       f"({generation['chosen_by']}: {generation['detail']}), stopping at "
                                       f"{', '.join(generation['stop_tokens']) or 'the end-of-sequence token'}"
                                       + (f"; scored with {data['scoring']}" if data.get("scoring") else "")))
    lines += [markdown_text(f"- {r['model']} {r['variant']}: {r['answers_cut']} of {r['items']} answers reached the cap")
              for r in rows if r.get("answers_cut")]
    lines += ["", *column_notes(rows, report["settings"].get("speed", {})),
              f"Exact match below {MIN_ITEMS} items is shown as hits/items with its 95% Wilson interval.",
              *map(markdown_text, runtime_notes(rows)), ""]
    return "\n".join(lines)


def column_notes(rows: Sequence[dict[str, Any]], speed: dict[str, str]) -> list[str]:
    """What the measures of the table's columns are, for the columns it has."""
    shown = {column.key for column in columns_for(rows)}
    notes = {
        "loss": "Loss and perplexity are over completion tokens only (prompt masked), as trained.",
        "memory_bytes": "Memory counts parameters, buffers and quantization state as stored.",
        "disk_bytes": "Size on disk counts the weight files a model needs: an adapter's with its base's as stored, a "
                      "GGUF file with its LoRA file.",
        "bits_per_weight": "Bits/weight covers the base linear layers (output head and adapters excluded), including "
                           "scales and quantization state.",
    }
    if speed:
        notes |= {"tokens_per_s": f"Tokens/s: {speed['tokens_per_s']}.",
                  "forward_tokens_per_s": f"Forward tok/s: {speed['forward_tokens_per_s']}."}
    return [note for key, note in notes.items() if key in shown]


def runtime_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Which runtime computed which rows, and what their agreement figures were measured against."""
    notes = [f"{r['model']} {r['variant']}: computed in llama.cpp ({r.get('llama_cpp', 'llama-cpp-python')}); "
             "prompt / gen tok/s: one sequence at a time, llama.cpp's prompt decoding and single-token steps"
             for r in rows if r.get("runtime") == "llama.cpp"]
    notes += [f"{r['model']} {r['variant']}: answer top-1 and answer KL (mean KL(reference ‖ this), nats per answer "
              "token) and all-token top-1 (llama.cpp's \"Same top p\": every position) "
              f"against {r['reference']}" for r in rows if r.get("reference")]
    return notes


def plot(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Bar charts of the main metrics, one bar per model/variant."""
    from kbit.core.system.plotting import pyplot

    plt = pyplot()

    columns = [c for c in columns_for(rows) if c.key in PLOTTED] or [COLUMNS[0]]
    labels = [f"{r['model'][:24]}\n{r['variant']}" for r in rows]
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns) + 1, 3.6), dpi=100, squeeze=False)
    for axis, column in zip(axes[0], columns):
        values = [_number(r.get(column.key)) for r in rows]
        scale = 100 if column.key == "exact_match" else (1 / 2**20 if column.key == "memory_bytes" else 1)
        heights = [0.0 if v is None or math.isinf(v) else v * scale for v in values]
        best = best_rows(rows, column)
        colors = ["tab:green" if i in best else "tab:blue" for i in range(len(rows))]
        axis.bar(range(len(rows)), heights, color=colors)
        for i, value in enumerate(values):  # an empty bar would read as zero
            if value is None or math.isinf(value):
                axis.text(i, 0, "n/a" if value is None else "inf", ha="center", va="bottom", fontsize=7, color="tab:gray")
        axis.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=6)
        unit = {"exact_match": " (%)", "memory_bytes": " (MiB)"}.get(column.key, "")
        axis.set_title(column.title + unit, fontsize=9)
        axis.grid(axis="y", alpha=0.3)
        axis.set_ylim(bottom=0)  # every plotted measure is ≥ 0: all-zero bars sit on the axis, not mid-plot
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def print_table(report: dict[str, Any], out_dir: Path | None = None) -> None:
    """The report table on the terminal (best per column in bold green), then gaps and the folder."""
    from rich.markup import escape

    from kbit.core.system.tables import print_results

    rows = report["rows"]
    columns = columns_for(rows)
    best = {c.key: best_rows(rows, c) for c in columns}
    marked = any(best.values())
    several = len({r.get("dataset") for r in rows}) > 1  # then each row says which, and ranks within it
    caption = (f"{BEST_MARK} best of each measure (lowest loss/perplexity/memory/size/bits, highest scores/speed)"
               + (" among the rows of its dataset" if several else "")) if marked else None
    labels = ["model", "variant", *(["dataset"] if several else [])]
    cells = []
    for i, row in enumerate(rows):
        line = [escape(row["model"]), escape(row["variant"]), *([escape(str(row.get("dataset", "")))] if several else []),
                str(row.get("items", ""))]
        for column in columns:
            text = escape(cell(row, column))
            line.append(f"[bold green]{text}{BEST_MARK}[/bold green]" if i in best[column.key] else text)
        cells.append(line)
    console = print_results("kbit eval", [*labels, "items", *(c.title for c in columns)], cells, labels=len(labels),
                            caption=caption)
    console.soft_wrap = not console.is_terminal and not os.environ.get("COLUMNS")  # piped: whole lines, for grep
    for gap in report.get("gaps", []):
        console.print(f"[yellow]gap[/yellow] {escape(gap['label'])} {gap['variant']}: {escape(gap['reason'])}")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    if out_dir is not None:
        console.print(f"[bold]report[/bold] {out_dir}")
