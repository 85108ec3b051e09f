"""How much an exact-match rate on few held-out items can be trusted: a 95% Wilson interval.

Below ``MIN_ITEMS`` items a rate is shown as hits/items with its interval and a warning, never as a
bare percentage: 2 of 4 right is anything from 15% to 85%.
"""

from __future__ import annotations

import math
from typing import Any

MIN_ITEMS = 30
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(hits: int, items: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``hits / items`` (0…1 both ends).

    Written out rather than imported: it is the textbook formula (Wilson 1927), and the libraries
    that have it (scipy, statsmodels) would be a heavy dependency for three lines.
    """
    if items <= 0:
        return 0.0, 1.0
    p = hits / items
    denominator = 1 + z * z / items
    centre = (p + z * z / (2 * items)) / denominator
    half = z * math.sqrt(p * (1 - p) / items + z * z / (4 * items * items)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def exact_match_stats(scores: list[float]) -> dict[str, Any]:
    """``exact_match`` (the rate), ``exact_match_hits``, and ``exact_match_ci95`` of per-item 0/1 scores."""
    hits, items = int(round(sum(scores))), len(scores)
    low, high = wilson_interval(hits, items)
    return {"exact_match": hits / items if items else None, "exact_match_hits": hits,
            "exact_match_ci95": [round(low, 4), round(high, 4)]}


def too_few(items: int | None) -> bool:
    return items is not None and 0 < items < MIN_ITEMS


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def interval_text(hits: int, items: int) -> str:
    low, high = wilson_interval(hits, items)
    return f"{100 * low:.0f}–{100 * high:.0f}%"


def exact_match_text(hits: int, items: int) -> str:
    """``2/4 (50%, 95% CI 15–85%)`` below ``MIN_ITEMS`` items, else ``89.0% (95% CI 81–94%)``."""
    if items <= 0:
        return "n/a"
    if too_few(items):
        return f"{hits}/{items} ({_percent(hits / items)}, 95% CI {interval_text(hits, items)})"
    return f"{100 * hits / items:.1f}% (95% CI {interval_text(hits, items)})"


def rate_text(rate: float, items: int) -> str:
    """A rate of hits measured on ``items``: ``exact_match_text``'s hits/items and interval when they are too
    few to read it as a percentage, else ``89.0%``."""
    return exact_match_text(round(rate * items), items) if too_few(items) else f"{100 * rate:.1f}%"


def small_sample_warning(items: int, hint: str = "") -> str:
    """The line that goes with a rate measured on ``items`` < ``MIN_ITEMS`` items."""
    return (f"{items} held-out item{'s' if items != 1 else ''}: too few items to compare "
            f"(below {MIN_ITEMS}; the 95% interval spans tens of points){hint}")
