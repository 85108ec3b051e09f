"""Agreement figures on hand-made logits: top-1 on answer and all positions, KL, |Δlogit|, and NaN/inf."""

from __future__ import annotations

import math

import pytest
import torch

from kbit.core.measure.agreement import agreement

REFERENCE = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
ANSWER = torch.tensor([False, True, True])


def _kl(p_logits: list[float], q_logits: list[float]) -> float:
    p, q = torch.tensor(p_logits).softmax(-1), torch.tensor(q_logits).softmax(-1)
    return float((p * (p / q).log()).sum())


def test_identical_logits_agree_everywhere_with_zero_divergence():
    figures = agreement([(REFERENCE, REFERENCE.clone(), ANSWER)])
    assert (figures.answer_top1, figures.same_top_p, figures.positions, figures.answer_positions) == (1.0, 1.0, 3, 2)
    assert figures.kl == figures.answer_kl == figures.max_abs_logit_diff == figures.mean_abs_logit_diff == 0.0


def test_a_flipped_answer_token_counts_on_answer_and_all_positions():
    candidate = torch.tensor([[2.0, 0.0], [1.5, 1.0], [3.0, 2.0]])  # position 1 now prefers token 0
    figures = agreement([(REFERENCE, candidate, ANSWER)])
    assert figures.answer_top1 == 0.5 and figures.same_top_p == pytest.approx(2 / 3)
    kls = [0.0, _kl([0.0, 1.0], [1.5, 1.0]), _kl([3.0, 1.0], [3.0, 2.0])]
    assert figures.kl == pytest.approx(sum(kls) / 3) and figures.answer_kl == pytest.approx(sum(kls[1:]) / 2)
    assert figures.max_abs_logit_diff == 1.5 and figures.mean_abs_logit_diff == pytest.approx(2.5 / 6)


def test_streamed_triples_give_the_figures_of_the_whole():
    candidate = REFERENCE + torch.tensor([[0.0, 3.0], [0.1, 0.0], [0.0, 0.5]])
    whole = agreement([(REFERENCE, candidate, ANSWER)])
    parts = agreement((REFERENCE[i:i + 1], candidate[i:i + 1], ANSWER[i:i + 1]) for i in range(3))
    assert parts.to_dict() == pytest.approx(whole.to_dict())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_candidate_position_is_a_disagreement_and_infinitely_far(bad):
    candidate = REFERENCE.clone()
    candidate[1, 0] = bad  # argmax could still land on token 1: it must count as disagreement anyway
    figures = agreement([(REFERENCE, candidate, ANSWER)])
    assert figures.nonfinite_positions == 1
    assert figures.answer_top1 == figures.answer_top1_within_ties == 0.5 and figures.same_top_p == pytest.approx(2 / 3)
    assert math.isinf(figures.kl) and math.isinf(figures.answer_kl)
    assert math.isinf(figures.max_abs_logit_diff) and math.isinf(figures.mean_abs_logit_diff)


def test_no_positions_give_no_figures_and_bad_shapes_are_refused():
    empty = agreement([(REFERENCE, REFERENCE, torch.zeros(3, dtype=torch.bool))])
    assert empty.answer_top1 is None and empty.answer_kl is None and empty.same_top_p == 1.0
    assert agreement([]).to_dict()["same_top_p"] is None
    with pytest.raises(ValueError, match="expected two"):
        agreement([(REFERENCE, REFERENCE[:, :1], ANSWER)])


def test_a_flip_between_near_tied_tokens_is_tolerated_and_counted_but_a_far_choice_is_not():
    from kbit.core.measure.agreement import NEAR_TIE

    reference = torch.tensor([[1.0, 1.0 - NEAR_TIE / 2, -3.0], [2.0, 0.0, 0.0]])
    near = torch.tensor([[1.0, 1.2, -3.0], [2.0, 0.0, 0.0]])  # picks the runner-up the reference nearly ties
    far = torch.tensor([[1.0, 0.0, 5.0], [2.0, 0.0, 0.0]])  # picks a token the reference rates 4 nats lower
    answer = torch.tensor([True, True])
    tolerated = agreement([(reference, near, answer)])
    assert tolerated.answer_top1 == 0.5 and tolerated.answer_top1_within_ties == 1.0 and tolerated.near_tie_flips == 1
    refused = agreement([(reference, far, answer)])
    assert refused.answer_top1 == refused.answer_top1_within_ties == 0.5 and refused.near_tie_flips == 0
