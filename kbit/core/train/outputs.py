"""Human-facing outputs of a run: the loss plot (model cards: ``kbit.core.runs.cards``)."""

from __future__ import annotations

from pathlib import Path


def write_loss_plot(path: Path, history: list[dict[str, float]], title: str) -> None:
    """Training loss against step, with the held-out loss where it was measured, as a PNG."""
    from kbit.core.system.plotting import pyplot

    plt = pyplot()

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("loss", "training"), ("eval_loss", "held-out")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
