"""The comparison for people: ``report.md``, ``report.png`` and the table on the terminal.

The plot puts quality (held-out exact match and loss) against bits per weight and size on disk,
one point per method and variant (the base model in black), beside each method's train and
quantize time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kbit.core.system.tables import fenced, markdown_code, markdown_row, markdown_text

HEADER = ("method", "variant", "held-out loss", "exact match", "bits/weight", "memory", "size on disk", "train s",
          "train tokens/s", "train MFU", "quantize s", "this run")
NOTES = (
    "Held-out loss is over answer tokens only; exact match on greedy answers. Memory is measured on the",
    "model as loaded (compressed-tensors checkpoints of gptq/awq decompress on load); bits/weight as each",
    "layer is stored (theirs as the checkpoint holds it). Size on disk counts the weight files a variant needs:",
    "the adapter variant needs its base as stored too (a quantized-training method quantizes it on load).",
    "Train s is the run's wall time without quantization (load, train, merge and merge check); train",
    "tokens/s and MFU are its training steps' (matrix-product FLOPs over this machine's measured matmul peak).",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        return None
    return float(value)


def fmt(value: Any, kind: str = "") -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * number:.1f}%"
    if kind == "mib":
        return f"{number / 2**20:.1f} MiB"
    if kind == "s":
        return f"{number:.1f}"
    return f"{number:.4g}"


def scored_items(report: dict[str, Any]) -> int:
    """How many held-out items every variant was scored on."""
    return min(report["settings"]["limit"], report["settings"]["dataset"]["held_out_examples"])


def few_items_warning(report: dict[str, Any]) -> str | None:
    from kbit.core.measure.sample_size import MIN_ITEMS, small_sample_warning, too_few

    items = scored_items(report)
    return small_sample_warning(items, f"; use --limit {MIN_ITEMS} or more, with a dataset that holds out as many") \
        if too_few(items) else None


def _exact_match_cell(value: Any, items: int) -> str:
    from kbit.core.measure.sample_size import rate_text

    number = _number(value)
    return "n/a" if number is None else rate_text(number, items)


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The report's rows as table cells (base first, then each method's variants or its failure)."""
    items = scored_items(report)
    cells = []
    for row in report["rows"]:
        if row["variant"] is None:
            states = {"pending": "not reached", "failed": f"failed: {row.get('reason')}",
                      "interrupted": "interrupted (kbit compare again continues it)"}
            state = states.get(row["status"], row["status"])
            cells.append([row["method"], "—", *["" for _ in HEADER[2:-1]], state])
            continue
        cells.append([
            row["method"], row["variant"], fmt(row.get("loss")), _exact_match_cell(row.get("exact_match"), items),
            fmt(row.get("bits_per_weight")), fmt(row.get("memory_bytes"), "mib"), fmt(row.get("disk_bytes"), "mib"),
            fmt(row.get("train_s"), "s") if row["method"] != "base" else "",
            fmt(row.get("train_tokens_per_s"), "s") if row["method"] != "base" else "",
            fmt(row.get("train_mfu"), "pct") if row["method"] != "base" else "",
            fmt(row.get("quantize_s"), "s") if row["method"] != "base" else "",
            row.get("action") or "",
        ])
    return cells


def summary_line(report: dict[str, Any]) -> str:
    methods = report["methods"]
    count = lambda key, value: sum(1 for m in methods if m.get(key) == value)  # noqa: E731
    return (f"{len(methods)} method(s): {count('action', 'trained')} trained, {count('action', 'reused')} reused "
            f"(not trained again), {count('action', 'resumed')} resumed, {count('status', 'failed')} failed")


def option_notes(report: dict[str, Any]) -> list[str]:
    """One line per ``-o`` option: the methods it applied to and those it was skipped for."""
    lines = []
    for key, value in report["settings"]["options"].items():
        given = [m for m in report["methods"] if key in (m.get("options") or {})]
        refused = [m["method"] for m in given  # a refusal names the option one of these ways
                   if any(f in (m.get("reason") or "") for f in (f"for option '{key}'", f"-o {key}="))]
        took = [m["method"] for m in given if m["method"] not in refused]
        skipped = [m["method"] for m in report["methods"] if key in (m.get("skipped_options") or [])]
        parts = [f"applied to {', '.join(took) or 'no method'}"] if took or not refused else []
        parts += [f"refused by {', '.join(refused)} (see its row)"] if refused else []
        line = f"- {markdown_code(f'-o {key}={value}')}: {'; '.join(parts)}"
        if skipped:
            line += f"; skipped for {', '.join(skipped)} (no such option)"
        lines.append(line)
    return lines


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    dataset = settings["dataset"]
    warning = few_items_warning(report)
    lines = [
        f"# kbit compare — {markdown_text(settings['model_name'])} on {markdown_text(dataset['name'])}, "
        f"{steps(settings['max_steps'])} per method",
        "",
        markdown_text(f"Status: {report['status']}" + (f" ({report['error']})" if report.get("error") else "")
                      + f". {summary_line(report)}."),
        "",
        f"Every method trained {steps(settings['max_steps'])} of batch {settings['batch_size']} "
        f"(seed {settings['seed']}, {_lr_text(settings.get('lr'))}) on the same {dataset['train_examples']} training examples of {markdown_text(dataset['name'])} "
        f"(fingerprint {dataset['fingerprint']}); every variant scored on the same "
        f"{scored_items(report)} held-out items.",
        "",
        *([f"Warning: {markdown_text(warning)}.", ""] if warning else []),
        "Reproduce:", "", *fenced(report["command"], "bash"), "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += [markdown_row(row) for row in table_rows(report)]
    notes = option_notes(report)
    if notes:
        lines += ["", "Options:", "", *notes]
    base = report.get("base", {})
    if base.get("status") == "failed":
        lines += ["", markdown_text(f"The base model was not evaluated: {base.get('reason')}")]
    lines += ["", *NOTES, ""]
    return "\n".join(lines)


def _lr_text(lr: Any) -> str:
    return f"learning rate {lr:g}" if isinstance(lr, (int, float)) else "each method at its own learning rate"


def plot(path: Path, report: dict[str, Any]) -> None:
    """Quality against bits per weight and size on disk (2 × 2 scatter), and time per method."""
    from kbit.core.system.plotting import pyplot

    plt = pyplot()

    rows = [r for r in report["rows"] if r["variant"] is not None]
    methods = [m["method"] for m in report["methods"]]
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(methods)}
    colors["base"] = "black"
    figure, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=100, gridspec_kw={"width_ratios": [1, 1, 0.8]})
    for i, (metric, title, scale) in enumerate((("exact_match", "held-out exact match (%)", 100),
                                                ("loss", "held-out loss", 1))):
        for j, (x_key, x_title, x_scale) in enumerate((("bits_per_weight", "bits per weight (as stored)", 1),
                                                       ("disk_bytes", "size on disk (MiB)", 1 / 2**20))):
            _scatter(axes[i][j], rows, colors, (x_key, x_scale), (metric, scale))
            axes[i][j].set_xlabel(x_title, fontsize=9)
            axes[i][j].set_ylabel(title, fontsize=9)
    _plot_times(axes[0][2], report["methods"])
    _plot_legend(axes[1][2], report, colors)
    settings = report["settings"]
    figure.suptitle(f"kbit compare: {settings['model_name']} on {settings['dataset']['name']}, "
                    f"{steps(settings['max_steps'])} per method", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


MARKERS = {"base": "s", "adapter": "o", "merged": "^", "quantized": "D"}


def _scatter(axis: Any, rows: list[dict[str, Any]], colors: dict[str, Any], x: tuple[str, float],
             y: tuple[str, float]) -> None:
    """One point per row; rows at the same place share one label (lora adapter and merged often do)."""
    labels: dict[tuple[float, float], list[str]] = {}
    for row in rows:
        x_value, y_value = _number(row.get(x[0])), _number(row.get(y[0]))
        if x_value is None or y_value is None:
            continue
        point = (x_value * x[1], y_value * y[1])
        axis.scatter(*point, color=colors.get(row["method"], "grey"), marker=MARKERS.get(row["variant"], "o"), s=50)
        labels.setdefault((round(point[0], 6), round(point[1], 6)), []).append(f"{row['method']} {row['variant']}")
    for point, names in labels.items():
        axis.annotate("\n".join(names), point, fontsize=7, xytext=(4, 3), textcoords="offset points")
    axis.grid(alpha=0.3)


def steps(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def _plot_times(axis: Any, methods: list[dict[str, Any]]) -> None:
    names = [m["method"] for m in methods]
    train = [_number(m.get("train_s")) or 0.0 for m in methods]
    quantize = [_number(m.get("quantize_s")) or 0.0 for m in methods]
    axis.barh(names, train, color="tab:blue", label="train")
    axis.barh(names, quantize, left=train, color="tab:orange", label="quantize")
    axis.invert_yaxis()
    axis.set_xlabel("seconds (from each run's kbit.json)", fontsize=9)
    axis.set_title("train and quantize time", fontsize=9)
    axis.legend(fontsize=7)
    axis.grid(axis="x", alpha=0.3)


def _plot_legend(axis: Any, report: dict[str, Any], colors: dict[str, Any]) -> None:
    """Colour per method, marker per variant, and the methods that failed with their reasons."""
    from matplotlib.lines import Line2D

    axis.axis("off")
    handles = [Line2D([], [], color=colors[name], marker="o", linestyle="", label=name)
               for name in ["base", *(m["method"] for m in report["methods"] if m["status"] == "finished")]]
    handles += [Line2D([], [], color="grey", marker=marker, linestyle="", label=variant)
                for variant, marker in MARKERS.items()]
    axis.legend(handles=handles, loc="upper left", fontsize=7, ncol=2, frameon=False)
    failed = [f"{m['method']}: {m.get('reason')}"[:80] for m in report["methods"] if m["status"] == "failed"]
    if failed:
        axis.text(0, 0.35, "failed:\n" + "\n".join(failed), va="top", fontsize=7, transform=axis.transAxes)


def print_table(report: dict[str, Any], out_dir: Path | None = None) -> None:
    """The comparison on the terminal, then the summary line and where the report is."""
    from rich.markup import escape

    from kbit.core.system.tables import print_results

    settings = report["settings"]
    console = print_results(f"kbit compare: {settings['model_name']}, {steps(settings['max_steps'])} per method", HEADER,
                            [[escape(c) for c in cells] for cells in table_rows(report)], labels=2)
    for line in option_notes(report):
        console.print(escape(line.lstrip("- ").replace("`", "")))
    console.print(summary_line(report) + f"; {report.get('seconds')} s")
    warning = few_items_warning(report)
    if warning:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    if out_dir is not None:
        console.print(f"[bold]report[/bold] {out_dir / 'report.md'}")
