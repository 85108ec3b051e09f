"""The short summary ``kbit train`` prints at the end of a run."""

from __future__ import annotations

from typing import Any

from kbit.core.runs.sections import HeldOut, Scores, Training
from kbit.core.measure.sample_size import MIN_ITEMS, exact_match_text, interval_text, small_sample_warning, too_few


def _percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def held_out_lines(metrics: Scores, eval_limit: int | None = None, held_out: int | None = None) -> tuple[str, str | None]:
    """Exact match before → after with its 95% interval (as hits/items below ``MIN_ITEMS`` items), and
    the small-sample warning that goes with it, if any (``held_out``: the items the run holds out)."""
    before, after = metrics.before or HeldOut(), metrics.after or HeldOut()
    items = after.items
    if not items or after.exact_match_hits is None:  # skipped (--eval-limit 0), or a run of kbit 0.2
        return f"exact match {_percent(before.exact_match)} → {_percent(after.exact_match)} ({items} items)", None
    hits = (before.exact_match_hits, after.exact_match_hits)
    intervals = " → ".join(interval_text(h, items) for h in hits if h is not None)
    rates = f"{_percent(before.exact_match)} → {_percent(after.exact_match)}"
    if not too_few(items):
        return f"exact match {rates} ({items} items; 95% CI {intervals})", None
    # --eval-limit cut the scored items, else the held-out split itself is this small
    limited = eval_limit is not None and items >= eval_limit and (held_out is None or held_out > items)
    hint = (f"; raise --eval-limit to {MIN_ITEMS} or more" if limited
            else f"; hold out more with --held-out {MIN_ITEMS}, or --held-out FILE of {MIN_ITEMS} items or more")
    counts = " → ".join(f"{h}/{items}" for h in hits if h is not None)
    return f"exact match {counts} ({rates}; 95% CI {intervals})", small_sample_warning(items, hint)


def loss_line(history: list[dict[str, Any]], steps: Any, teacher: str | None = None) -> str | None:
    """Training loss first → last logged step, and the held-out loss first → last measured, if any; with a
    ``teacher``, that the training loss includes the KL term (the held-out loss is the plain cross-entropy)."""
    train = [h["loss"] for h in history if "loss" in h]
    held_out = [h["eval_loss"] for h in history if "eval_loss" in h]
    if not train:
        return None
    line = f"{train[0]:.3f} → {train[-1]:.3f} over {steps} step{'' if steps == 1 else 's'}"
    if held_out:
        line += f"; held-out loss {held_out[0]:.3f} → {held_out[-1]:.3f}" if len(held_out) > 1 else f"; held-out loss {held_out[0]:.3f}"
    if teacher:
        line += f" (the training loss includes the KL to teacher {teacher})"
    return line


def speed_line(train: Training) -> str | None:
    """Tokens/s and achieved matmul GFLOP/s of the training steps, with the share of the measured peak."""
    if not train.tokens_per_s:
        return None
    line = (f"{train.tokens_per_s:.0f} tokens/s over {train.step_seconds} s of training steps, "
            f"{train.achieved_gflops} GFLOP/s in matrix products")
    if train.mfu is not None:
        line += f" = {100 * train.mfu:.0f}% of the measured peak ({train.peak_gflops} GFLOP/s, {train.peak})"
    if train.world_size and train.world_size > 1:  # rank 0 measures its own steps, on its own share of the device
        line += f"; figures of one process of {train.world_size}"
    return line


def variant_lines(metrics: Scores) -> list[str]:
    """One line per variant the run scored after training (adapter, merged, quantized, deploy files):
    its held-out exact match on the same items; empty when only the adapter was scored."""
    variants = metrics.variants
    if len(variants) < 2:
        return []
    width = max(len(name) for name in variants)
    return [f"{name:<{width}}  {exact_match_text(v.exact_match_hits, v.items)}  {v.model}"
            for name, v in variants.items() if v.items and v.exact_match_hits is not None]


def print_summary(result: Any) -> None:
    if result.record is None:
        return  # not the main process
    from rich.console import Console
    from rich.markup import escape

    record = result.record
    metrics, merge = record.metrics, record.merge
    console = Console()
    if not console.is_terminal:
        console.soft_wrap = True  # piped output: one line per line, whatever its length, for grep
    console.print(f"[bold]run[/bold]      {result.run_dir}")
    line = loss_line(record.loss_history, record.train.steps, record.config.teacher if record.config is not None else None)
    if line:
        console.print(f"[bold]loss[/bold]     {escape(line)}")
    line = speed_line(record.train)
    if line:
        console.print(f"[bold]speed[/bold]    {escape(line)}")
    line, warning = held_out_lines(metrics, record.config.eval_limit if record.config is not None else None,
                                   record.dataset.held_out_examples)
    console.print(f"[bold]held-out[/bold] {escape(line)}")
    for number, variant in enumerate(variant_lines(metrics)):
        console.print(f"[bold]{'variants' if number == 0 else '':<8}[/bold] {escape(variant)}")
    if warning:
        console.print(f"[bold yellow]warning[/bold yellow]  {escape(warning)}")
    if shared := record.dataset.held_out_trained_prompts:  # said when the data was read too: a score to read with it
        console.print(f"[bold yellow]warning[/bold yellow]  {shared} of the {record.dataset.held_out_examples} held-out "
                      "items ask a prompt a training example asks too: their scores measure recall")
    generation = metrics.generation
    if generation:
        cut = metrics.after.answers_cut if metrics.after else None
        cut_text = f"; {cut} answer(s) reached the cap" if cut else ""
        console.print(f"[bold]answers[/bold]  at most {generation['max_new_tokens']} new tokens "
                      f"({escape(generation['chosen_by'])}: {escape(generation['detail'])}){cut_text}")
    if merge is not None and merge.max_abs_logit_diff is not None:
        base = merge.base_used or f"the {merge.base} base"
        console.print(
            f"[bold]merged[/bold]   into {base} ({merge.dtype}): max |Δlogit| "
            f"{merge.max_abs_logit_diff:.2e}, top-1 agreement {100 * merge.top1_agreement:.2f}%"
        )
    elif merge is not None:
        console.print(f"[bold]merge[/bold]    {merge.action}: {merge.reason or ''}")
    for export in record.exports:
        if export.source.get("model") == "the trained adapter model":  # a file the run wrote itself
            console.print(f"[bold]deploy[/bold]   {export.file} ({export.size_bytes / 2**20:.1f} MiB), in "
                          f"{export.extra.get('runtime', 'transformers')}: top-1 agreement with the trained model on answer "
                          f"tokens {100 * export.top1_agreement:.2f}%, mean KL {export.extra.get('kl') or 0:.2g}, held-out "
                          f"exact match {_percent(export.exact_match)} (trained model {_percent(export.source.get('exact_match'))})")
    console.print(f"[bold]time[/bold]     {record.wall_time_s} s")
