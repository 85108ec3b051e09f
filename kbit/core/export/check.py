"""Check a written GGUF against the model it was written from, on held-out prompts; out of range fails.

The file is loaded back the way ``kbit eval FILE.gguf`` loads it (transformers' GGUF reader,
dequantized to float32, its own tokenizer), and compared with the source model on the same
held-out items:

- tokenizer: the file's tokenizer must turn every rendered prompt + answer into the source's ids;
- logits over those tokens: max and mean absolute difference over every position; top-1 agreement
  on the answer positions (where the next token is an answer token: what generation depends on),
  which is what is gated, and over every position, reported. Every held-out prompt repeats the
  same system prompt, so a single near-tie there (SmolLM2 has one with a 0.08 logit gap) would
  count once per item in an all-position figure;
- held-out exact match of greedy answers, each model with its own tokenizer.

Gates by type (override with ``--min-top1`` / ``--max-em-drop``): f16, bf16 and q8_0 are meant to
be lossless in use, so top-1 agreement must be at least 99% and exact match may drop by at most two
points. q4_*/q5_* round the weights to 16/32 levels per block of 32, which moves many near-tied
next-token choices; they must keep 90% (q5) / 80% (q4) top-1 agreement on answer tokens — q4_0
measured 87.3% on the default run (README), while a file written wrong (a missed permutation, a
wrong tokenizer) agrees on almost nothing — and their exact-match change is reported, not gated,
since a small fine-tune can lose part of its gain to round-to-nearest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from kbit.core.errors import FidelityError

GATES = {
    "f16": (0.99, 0.02), "bf16": (0.99, 0.02), "q8_0": (0.99, 0.02),
    "q5_0": (0.90, None), "q5_1": (0.90, None),
    "q4_0": (0.80, None), "q4_1": (0.80, None),
}
BATCH = 16


@attrs.frozen
class Gate:
    """The bounds a file must meet: top-1 agreement at least ``min_top1``; exact match at most
    ``max_em_drop`` below the source's (None: not gated)."""

    min_top1: float
    max_em_drop: float | None

    @classmethod
    def for_type(cls, file_type: str, min_top1: float | None = None, max_em_drop: float | None = None) -> Gate:
        top1, drop = GATES[file_type]
        return cls(top1 if min_top1 is None else min_top1, drop if max_em_drop is None else max_em_drop)

    def describe(self) -> str:
        drop = f", exact match drop ≤ {self.max_em_drop * 100:g} points" if self.max_em_drop is not None else ""
        return f"top-1 ≥ {self.min_top1:.0%}{drop}"


def check_gguf(gguf_path: Path, source_dir: Path, task: str, examples: Sequence[Any], gate: Gate,
               max_new_tokens: int = 16, source_exact_match: float | None = None) -> dict[str, Any]:
    """Compare ``gguf_path`` with ``source_dir`` on ``examples``; returns the figures, raises FidelityError.

    ``source_exact_match``: the source's exact match on these very examples, when an earlier check
    measured it (generation is the slow part); measured here otherwise.
    """
    from kbit.core.models import ModelSource, load_causal_lm, load_gguf, load_tokenizer

    started = time.time()
    items = list(examples)
    if not items:
        raise FidelityError("no held-out examples to check the export against; the run's dataset has none")
    source = load_causal_lm(str(source_dir), dtype="float32").eval()
    source_tokenizer = load_tokenizer(ModelSource(path=str(source_dir), name=Path(source_dir).name, origin="local"))
    exported, exported_tokenizer = load_gguf(Path(gguf_path))
    if exported_tokenizer.pad_token is None:
        exported_tokenizer.pad_token = exported_tokenizer.eos_token
    mismatched = _tokenizer_mismatches(source_tokenizer, exported_tokenizer, items)
    if mismatched:
        raise FidelityError(f"the GGUF's tokenizer encodes {len(mismatched)} of {len(items)} held-out prompts differently "
                            f"from the model's (first: item {mismatched[0] + 1}); the file was not kept")
    figures = logit_figures(source, exported, answer_batches(source_tokenizer, items))
    source_em = (exact_match(source, source_tokenizer, task, items, max_new_tokens)
                 if source_exact_match is None else source_exact_match)
    exported_em = exact_match(exported, exported_tokenizer, task, items, max_new_tokens)
    result = {**figures, "items": len(items), "exact_match": exported_em, "source": {"exact_match": source_em},
              "gate": attrs.asdict(gate), "check_seconds": round(time.time() - started, 1)}
    failures = []
    if figures["top1_agreement"] < gate.min_top1:
        failures.append(f"top-1 agreement {figures['top1_agreement']:.2%} < {gate.min_top1:.2%} (--min-top1)")
    if gate.max_em_drop is not None and source_em - exported_em > gate.max_em_drop + 1e-9:
        failures.append(f"held-out exact match {exported_em:.1%} is {100 * (source_em - exported_em):.1f} points below the "
                        f"source's {source_em:.1%} (allowed {100 * gate.max_em_drop:g}, --max-em-drop)")
    if failures:
        raise FidelityError(f"export check failed on {len(items)} held-out items: {'; '.join(failures)}; the file was not kept")
    return result


def _rendered(tokenizer: Any, example: Any) -> str:
    from kbit.core.evaluate.generation import render_prompt

    return render_prompt(tokenizer, example) + example.completion


def _tokenizer_mismatches(source: Any, exported: Any, items: Sequence[Any]) -> list[int]:
    return [i for i, e in enumerate(items)
            if source(_rendered(source, e), add_special_tokens=False)["input_ids"]
            != exported(_rendered(exported, e), add_special_tokens=False)["input_ids"]]


def answer_batches(tokenizer: Any, items: Sequence[Any]) -> list[dict[str, Any]]:
    """Right-padded prompt + answer batches, each with an ``answer_mask``: the positions whose next-token
    prediction is an answer token (the last prompt position through the one before the last answer token)."""
    import torch

    from kbit.core.evaluate.generation import render_prompt

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        batches = []
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            batch = dict(tokenizer([_rendered(tokenizer, e) for e in chunk], return_tensors="pt", padding=True,
                                   add_special_tokens=False))
            answer = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
            for row, example in enumerate(chunk):
                prompt = len(tokenizer(render_prompt(tokenizer, example), add_special_tokens=False)["input_ids"])
                answer[row, prompt - 1:int(batch["attention_mask"][row].sum()) - 1] = True
            batches.append({**batch, "answer_mask": answer})
        return batches
    finally:
        tokenizer.padding_side = side


def logit_figures(source: Any, exported: Any, batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """|Δlogit| over every real token position; top-1 agreement there and on answer positions."""
    import torch

    max_err, total, count, agree, positions, answer_agree, answers = 0.0, 0.0, 0, 0, 0, 0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "answer_mask"}
            ref, out = source(**inputs).logits.float(), exported(**inputs).logits.float()
            mask, answer = batch["attention_mask"].bool(), batch["answer_mask"]
            diff = (ref - out).abs()[mask]
            max_err = max(max_err, float(diff.max()))
            total += float(diff.sum())
            count += diff.numel()
            same = ref.argmax(-1) == out.argmax(-1)
            agree += int(same[mask].sum())
            positions += int(mask.sum())
            answer_agree += int(same[answer].sum())
            answers += int(answer.sum())
    return {"max_abs_logit_diff": max_err, "mean_abs_logit_diff": total / max(count, 1),
            "top1_agreement": answer_agree / max(answers, 1), "answer_positions": answers,
            "top1_agreement_all_positions": agree / max(positions, 1), "positions": positions}


def exact_match(model: Any, tokenizer: Any, task: str, items: Sequence[Any], max_new_tokens: int) -> float:
    from kbit.core.evaluate.generation import generate_answers
    from kbit.core.evaluate.scoring import score

    predictions = generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens).texts
    return sum(score(task, p, list(e.answers))["exact_match"] for p, e in zip(predictions, items)) / len(items)
