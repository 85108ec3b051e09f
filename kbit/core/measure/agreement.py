"""How closely a candidate's next-token logits follow a reference's on the same token sequences.

One function, :func:`agreement`, for every such check (a GGUF against its source, llama.cpp against
the trained model). Its input is a stream of (reference, candidate, answer mask) triples, each
covering some token positions (rows) of one or more sequences, padding already removed; the answer
mask marks the positions whose next token is an answer token, what greedy answers depend on.

Figures:

- ``answer_top1``: top-1 (argmax) agreement on answer positions;
- ``answer_top1_within_ties``: the same, where a candidate's top token that the reference rates
  within ``NEAR_TIE`` nats of its own top counts as agreeing (``near_tie_flips`` counts those
  positions). Which of two near-tied tokens wins is decided by rounding noise: a faithful q8_0 file
  flips some (the unfine-tuned default base: 6 of 259 answer positions, each where the reference's
  top token led by under 0.09), while a damaged file picks tokens the reference rates far lower —
  gates use this figure and report the plain one;
- ``same_top_p``: top-1 agreement on every position, as llama.cpp's ``llama-perplexity
  --kl-divergence`` reports "Same top p";
- ``answer_kl`` / ``kl``: mean KL(reference ‖ candidate) of the next-token distributions, in nats
  per position, on answer positions / every position;
- ``max_abs_logit_diff`` / ``mean_abs_logit_diff``: |Δlogit| over every logit of every position.

A position where the candidate (or the reference) holds a NaN or an infinity counts as a
disagreement, its KL and |Δlogit| as infinite: a broken model must fail every bound, and an
infinity compares as failing where a NaN would silently pass ``value > bound``. ``nonfinite_positions``
says how many there were. A figure over no positions is None.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

NEAR_TIE = 0.25
"""Nats: a token the reference rates this close to its top one (at most 1.28× less likely) is a near-tie."""


@attrs.frozen
class Agreement:
    """Agreement figures (see module docs); counts of the positions they cover."""

    positions: int
    answer_positions: int
    nonfinite_positions: int
    answer_top1: float | None
    near_tie_flips: int
    answer_top1_within_ties: float | None
    same_top_p: float | None
    answer_kl: float | None
    kl: float | None
    max_abs_logit_diff: float | None
    mean_abs_logit_diff: float | None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def agreement(triples: Iterable[tuple[Any, Any, Any]]) -> Agreement:
    """Figures over ``triples`` of (reference logits (n, vocab), candidate logits (n, vocab), answer mask (n,) bool).

    Triples are consumed one at a time, so a caller can stream batches without holding all logits.
    Raises ValueError when a triple's shapes disagree.
    """
    import torch

    totals = dict.fromkeys(("positions", "answers", "nonfinite", "same", "answer_same", "logits", "flips",
                            "tolerant_same"), 0)
    sums = {"kl": 0.0, "answer_kl": 0.0, "abs": 0.0, "max_abs": 0.0}
    for reference, candidate, answer in triples:
        reference, candidate = reference.detach().double().cpu(), candidate.detach().double().cpu()
        answer = answer.detach().bool().cpu()
        if reference.shape != candidate.shape or reference.dim() != 2 or answer.shape != reference.shape[:1]:
            raise ValueError(f"logits {tuple(reference.shape)} and {tuple(candidate.shape)} with answer mask "
                             f"{tuple(answer.shape)}: expected two (positions, vocab) tensors and a (positions,) mask")
        finite = torch.isfinite(reference).all(-1) & torch.isfinite(candidate).all(-1)
        same = (reference.argmax(-1) == candidate.argmax(-1)) & finite
        kl = _kl(reference, candidate).masked_fill(~finite, float("inf"))
        diff = (reference - candidate).abs().masked_fill(~finite[:, None], float("inf"))
        totals["positions"] += len(answer)
        totals["answers"] += int(answer.sum())
        totals["nonfinite"] += int((~finite).sum())
        totals["same"] += int(same.sum())
        totals["answer_same"] += int(same[answer].sum())
        chosen = reference.gather(-1, candidate.argmax(-1, keepdim=True))[:, 0]
        tolerated = (chosen >= reference.max(-1).values - NEAR_TIE) & finite
        totals["flips"] += int((tolerated & ~same)[answer].sum())
        totals["tolerant_same"] += int(tolerated[answer].sum())
        totals["logits"] += diff.numel()
        sums["kl"] += float(kl.sum())
        sums["answer_kl"] += float(kl[answer].sum())
        sums["abs"] += float(diff.sum())
        sums["max_abs"] = max(sums["max_abs"], float(diff.max())) if diff.numel() else sums["max_abs"]
    positions, answers = totals["positions"], totals["answers"]
    return Agreement(
        positions=positions, answer_positions=answers, nonfinite_positions=totals["nonfinite"],
        answer_top1=_ratio(totals["answer_same"], answers), near_tie_flips=totals["flips"],
        answer_top1_within_ties=_ratio(totals["tolerant_same"], answers), same_top_p=_ratio(totals["same"], positions),
        answer_kl=_ratio(sums["answer_kl"], answers), kl=_ratio(sums["kl"], positions),
        max_abs_logit_diff=sums["max_abs"] if positions else None, mean_abs_logit_diff=_ratio(sums["abs"], totals["logits"]),
    )


def _kl(reference: Any, candidate: Any) -> Any:
    """KL(reference ‖ candidate) per row, in nats (rows with non-finite logits give NaN, masked by the caller)."""
    import torch

    log_p = torch.log_softmax(reference, -1)
    log_q = torch.log_softmax(candidate, -1)
    # clamp: rounding can leave -1e-16 where the distributions are equal
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def _ratio(part: float, whole: int) -> float | None:
    return part / whole if whole else None
