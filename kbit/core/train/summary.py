"""The short summary ``kbit train`` prints at the end of a run."""

from __future__ import annotations

from typing import Any


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def print_summary(result: Any) -> None:
    if result.record is None:
        return  # not the main process
    from rich.console import Console

    record = result.record
    history, metrics, merge = record.loss_history, record.metrics, record.merge or {}
    console = Console()
    console.print(f"[bold]run[/bold]      {result.run_dir}")
    if history:
        console.print(f"[bold]loss[/bold]     {history[0]['loss']:.3f} → {history[-1]['loss']:.3f} over {record.train['steps']} steps")
    console.print(
        f"[bold]held-out[/bold] exact match {_percent(metrics.get('exact_match_before'))} → "
        f"{_percent(metrics.get('exact_match_after'))} ({metrics.get('after', {}).get('items', 0)} items)"
    )
    if "max_abs_logit_diff" in merge:
        base = merge.get("base_used") or f"the {merge['base']} base"
        console.print(
            f"[bold]merged[/bold]   into {base} ({merge['dtype']}): max |Δlogit| "
            f"{merge['max_abs_logit_diff']:.2e}, top-1 agreement {100 * merge['top1_agreement']:.2f}%"
        )
    elif merge:
        console.print(f"[bold]merge[/bold]    {merge['action']}: {merge.get('reason', '')}")
    for export in record.exports:
        against = export.get("against_adapter")
        if against:
            console.print(f"[bold]deploy[/bold]   {export['file']} ({export['size_bytes'] / 2**20:.1f} MiB): top-1 agreement "
                          f"with the trained model {100 * against['top1_agreement']:.2f}%, max |Δlogit| "
                          f"{against['max_abs_logit_diff']:.2e}, held-out exact match {_percent(export.get('exact_match'))}")
    console.print(f"[bold]time[/bold]     {record.wall_time_s} s")
