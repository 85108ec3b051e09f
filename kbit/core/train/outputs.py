"""Human-facing outputs of a run: the loss plot (model cards: ``kbit.core.cards``)."""

from __future__ import annotations

from pathlib import Path


def write_loss_plot(path: Path, history: list[dict[str, float]], title: str) -> None:
    """Training loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [h["step"] for h in history]
    axis.plot(steps, [h["loss"] for h in history], marker="o", markersize=3)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.set_title(title, fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
