"""Human-facing outputs of a run: the Hugging Face model card and the loss plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_model_card(path: Path, metadata: dict[str, Any]) -> None:
    """A model card with Hugging Face front matter (base_model, library_name, tags incl. the method)."""
    spec = metadata["spec"]
    adapter = spec.get("adapter") or {}
    metrics = metadata.get("metrics", {})
    merge = metadata.get("merge", {})
    tags = ["kbit", spec["method"], "sft", adapter.get("peft_type", "adapter")]
    if spec.get("weights_bits"):
        tags.append(f"{spec['weights_bits']}-bit")
    front = "\n".join(
        ["---", f"base_model: {metadata['base_model']['name']}", "library_name: peft", "tags:"]
        + [f"- {t}" for t in tags]
        + ["---"]
    )
    lines = [
        front,
        f"# {metadata['name']}",
        "",
        f"Supervised fine-tune of `{metadata['base_model']['name']}` on `{metadata['dataset']['name']}` with kbit's "
        f"`{spec['method']}` method ({metadata.get('method_summary', '')}).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| adapter | {adapter.get('peft_type')} r={adapter.get('r')} alpha={adapter.get('lora_alpha')} |",
        f"| weights bits during training | {spec.get('weights_bits') or 'full precision'} |",
        f"| steps | {metadata.get('train', {}).get('steps')} |",
        f"| held-out exact match before → after | {metrics.get('exact_match_before')} → {metrics.get('exact_match_after')} |",
        f"| merge | {merge.get('action', 'none')} {merge.get('base', '')} {merge.get('dtype', '')} |",
        f"| merge max abs logit diff | {merge.get('max_abs_logit_diff', 'n/a')} |",
        "",
        "Load the adapter with `PeftModel.from_pretrained(base, 'adapter')`; the merged model (if any) with",
        "`AutoModelForCausalLM.from_pretrained('merged')`. Full settings are in `kbit.json`.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


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
