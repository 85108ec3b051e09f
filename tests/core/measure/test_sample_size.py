"""The 95% Wilson interval and how few items are shown: hits/items with the interval, never a bare rate."""

from __future__ import annotations

import pytest

from kbit.core.measure.sample_size import MIN_ITEMS, exact_match_stats, exact_match_text, wilson_interval


@pytest.mark.parametrize("hits, items, low, high", [
    (2, 4, 0.1500, 0.8500),   # the example: 2/4 is 15–85%
    (0, 4, 0.0, 0.4899),
    (4, 4, 0.5101, 1.0),
    (89, 100, 0.8137, 0.9375),
    (1, 1, 0.2065, 1.0),
])
def test_wilson_interval_matches_the_formula_by_hand(hits, items, low, high):
    assert wilson_interval(hits, items) == pytest.approx((low, high), abs=1e-4)


def test_few_items_are_shown_as_hits_of_items_with_the_interval():
    assert exact_match_text(2, 4) == "2/4 (50%, 95% CI 15–85%)"
    assert exact_match_text(1, 1) == "1/1 (100%, 95% CI 21–100%)"
    assert exact_match_text(89, 100) == "89.0% (95% CI 81–94%)"
    assert MIN_ITEMS == 30


def test_stats_of_per_item_scores():
    assert exact_match_stats([1.0, 0.0, 1.0, 0.0]) == {"exact_match": 0.5, "exact_match_hits": 2,
                                                       "exact_match_ci95": [0.15, 0.85]}
