"""Item 5b, why awq rounds with GPTQ: one merged model, many W4 g64 quantizations, held-out loss of each.

The model is item 4's merged model (trained here when item 4 has not left one in the work folder),
the data item 5's: the first N training texts as calibration, the held-out completion loss
(``kbit.core.measure.metrics.completion_loss``) over the first 100 held-out items. Each
configuration is one llm-compressor ``oneshot`` on a freshly loaded copy, evaluated in memory
(fake-quantized; item 5 shows the saved and reloaded checkpoints score the same). Every line gives
the loss against the unquantized merged model's; the note says what changed. Nothing here has a
target: the figures are the evidence for the choice in ``kbit/plugins/awq.py``.

    python -m benchmarks.awq_ablation --workdir W --threads 1                 # every configuration
    python -m benchmarks.awq_ablation --workdir W --configs rtn,awq-rtn,awq-gptq

The AWQ configurations take 1-3 minutes each on a quiet 2-core CPU (~15 minutes on a busy one).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import Figure, arith_data, check_device, finish, parser, ratio, setup, tokenizer, workdir

ITEM = "5b awq ablation"
MAPPINGS = {  # llm-compressor's Llama mappings (transform/awq/mappings.py), one by one
    "qkv": ("re:.*input_layernorm$", ["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"]),
    "gate-up": ("re:.*post_attention_layernorm$", ["re:.*gate_proj$", "re:.*up_proj$"]),
    "down": ("re:.*up_proj$", ["re:.*down_proj$"]),
}


@dataclass(frozen=True)
class Config:
    """One quantization: ``rounding`` is rtn (QuantizationModifier) or gptq; ``awq`` holds AWQModifier's
    arguments (None: no AWQ); ``mask`` restricts AWQ's statistics and loss to some positions."""

    note: str
    rounding: str = "rtn"
    awq: dict[str, Any] | None = None
    symmetric: bool = False
    samples: int | None = None  # None: the run's calibration count
    observer: str | None = None
    targets: tuple[str, ...] = ()
    mask: str | None = None


CONFIGS: dict[str, Config] = {
    "rtn": Config("control: round-to-nearest, asymmetric, no AWQ"),
    "rtn-sym": Config("round-to-nearest, symmetric, no AWQ", symmetric=True),
    "rtn-mse": Config("round-to-nearest with llm-compressor's MSE weight observer (range clipping)",
                      observer="memoryless_mse"),
    "rtn-o_proj-only": Config("round-to-nearest of o_proj only (the layer AWQ cannot scale with GQA), rest fp",
                              targets=("o_proj",)),
    "awq-rtn": Config("AWQ (llm-compressor defaults: duo scaling, 20-point grid) + round-to-nearest = awq -o rounding=rtn",
                      awq={}),
    "awq-rtn-duo-false": Config("AWQ scales from activations only", awq={"duo_scaling": False}),
    "awq-rtn-duo-both": Config("AWQ grid over both scale formulas", awq={"duo_scaling": "both"}),
    "awq-rtn-grid40": Config("AWQ with a 40-point grid", awq={"n_grid": 40}),
    "awq-rtn-64": Config("AWQ with 64 calibration texts (kbit's default count)", awq={}, samples=64),
    "awq-rtn-128": Config("AWQ with 128 calibration texts", awq={}, samples=128),
    "awq-rtn-qkv": Config("AWQ with the input_layernorm -> q/k/v mapping only", awq={"mappings": ("qkv",)}),
    "awq-rtn-gate-up": Config("AWQ with the post_attention_layernorm -> gate/up mapping only",
                              awq={"mappings": ("gate-up",)}),
    "awq-rtn-down": Config("AWQ with the up_proj -> down_proj mapping only", awq={"mappings": ("down",)}),
    "awq-rtn-completion": Config("AWQ statistics and loss from completion positions only (use_loss_mask)",
                                 awq={}, mask="completion"),
    "awq-rtn-no-prefix": Config("AWQ statistics and loss without the prefix every calibration text shares",
                                awq={}, mask="no-prefix"),
    "gptq-sym": Config("GPTQ, symmetric (kbit's gptq)", rounding="gptq", symmetric=True),
    "gptq": Config("GPTQ, asymmetric, no AWQ", rounding="gptq"),
    "awq-gptq": Config("AWQ + GPTQ rounding = kbit's awq default", rounding="gptq", awq={}),
}
QUICK = ("rtn", "awq-rtn", "awq-gptq")


def recipe(config: Config) -> list[Any]:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQMapping, AWQModifier

    weights = dict(num_bits=4, type="int", symmetric=config.symmetric, strategy="group", group_size=64)
    if config.observer:
        weights["observer"] = config.observer
    targets = [f"re:.*{t}$" for t in config.targets] or ["Linear"]
    quantization = {"config_groups": {"group_0": QuantizationScheme(targets=targets, weights=QuantizationArgs(**weights))},
                    "ignore": ["lm_head"]}
    rounding = (GPTQModifier(dampening_frac=0.01, **quantization) if config.rounding == "gptq"
                else QuantizationModifier(**quantization))
    if config.awq is None:
        return [rounding]
    awq = dict(config.awq)
    if "mappings" in awq:
        awq["mappings"] = [AWQMapping(*MAPPINGS[name]) for name in awq["mappings"]]
    return [AWQModifier(**awq), rounding]


def loss_masks(tok: Any, examples: list[Any], input_ids: list[list[int]], mode: str) -> list[list[int]]:
    """1 where a position's prediction should count: from the last prompt token on (completion), or
    after the token prefix shared by every calibration text (chat template, system prompt)."""
    from kbit.core.measure.generation import render_prompt

    shared = 0
    while all(len(ids) > shared + 1 and ids[shared] == input_ids[0][shared] for ids in input_ids):
        shared += 1
    masks = []
    for example, ids in zip(examples, input_ids):
        first = shared
        if mode == "completion":
            first = len(tok(render_prompt(tok, example), add_special_tokens=False)["input_ids"]) - 1
        masks.append([int(i >= first) for i in range(len(ids))])
    return masks


def quantized_loss(config: Config, merged: Path, samples: int, held_out: int) -> float:
    from datasets import Dataset
    from llmcompressor import oneshot

    from benchmarks.ptq import unpinned_without_accelerator
    from kbit.core.measure.generation import render_prompt
    from kbit.core.evaluate.loading import load_plain
    from kbit.core.measure.metrics import completion_loss

    tok, data = tokenizer(), arith_data()
    examples = list(data.train[: config.samples or samples])
    encoded = tok([render_prompt(tok, e) + e.completion for e in examples], truncation=True, max_length=256,
                  add_special_tokens=False)
    columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if config.mask:
        columns["loss_mask"] = loss_masks(tok, examples, encoded["input_ids"], config.mask)
    model = load_plain(str(merged))
    with unpinned_without_accelerator():
        oneshot(model=model, dataset=Dataset.from_dict(columns), recipe=recipe(config), num_calibration_samples=len(examples),
                max_seq_length=256, shuffle_calibration_samples=False, use_loss_mask=bool(config.mask))
    return completion_loss(model, tok, data.held_out[:held_out])["loss"]


def measure(args: argparse.Namespace) -> list[Figure]:
    check_device(args.device)
    from benchmarks.merge_fidelity import train_run
    from kbit.core.evaluate.loading import load_plain
    from kbit.core.measure.metrics import completion_loss

    samples, held_out = (4, 16) if args.quick else (32, 100)
    steps, batch = (3, 2) if args.quick else (20, 8)
    names = [n.strip() for n in args.configs.split(",") if n.strip()] if args.configs else list(QUICK if args.quick else CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    merged = train_run(workdir(args, "merge_fidelity") / "run", steps, batch) / "merged"
    base = completion_loss(load_plain(str(merged)), tokenizer(), arith_data().held_out[:held_out])["loss"]
    print(f"item 5b: {len(names)} quantizations of {merged}; unquantized held-out loss {base:.4f}", flush=True)
    figures = []
    for name in names:
        config = CONFIGS[name]
        loss = quantized_loss(config, merged, samples, held_out)
        print(f"  {name}: {loss:.4f} ({loss - base:+.4f})", flush=True)
        figures.append(Figure(ITEM, f"{name} held-out loss vs unquantized", loss, base, ratio(loss, base), "", "loss",
                              f"{config.note}; difference {loss - base:+.3f}; "
                              f"{config.samples or samples} calibration texts, {held_out} held-out examples"))
    return figures


def main(argv: list[str] | None = None) -> list[Figure]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--configs", help=f"comma-separated configurations (default: all): {', '.join(CONFIGS)}")
    args = p.parse_args(argv)
    setup(args)
    figures = measure(args)
    finish(figures, args, "Item 5b: why awq rounds with GPTQ")
    return figures


if __name__ == "__main__":
    main()
