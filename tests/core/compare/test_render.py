"""The comparison's tables: a rate scored on few items is shown as hits/items with its interval, and said."""

from __future__ import annotations

from kbit.core.compare.render import markdown, table_rows


def _report(limit: int) -> dict:
    dataset = {"name": "qa", "train_examples": 54, "held_out_examples": 6, "fingerprint": "f"}
    settings = {"limit": limit, "dataset": dataset, "model_name": "m", "max_steps": 3, "batch_size": 4, "seed": 0,
                "options": {}}
    row = {"method": "qlora", "variant": "merged", "status": "finished", "loss": 1.0, "exact_match": 4 / 6}
    return {"settings": settings, "rows": [row], "methods": [], "status": "finished", "command": "kbit compare", "base": {}}


def test_few_items_are_shown_as_hits_over_items_with_a_warning():
    report = _report(limit=100)  # the dataset holds out 6
    assert table_rows(report)[0][3] == "4/6 (67%, 95% CI 30–90%)"
    assert "Warning: 6 held-out items: too few items to compare" in markdown(report)


def test_enough_items_are_a_percentage_without_a_warning():
    report = _report(limit=100)
    report["settings"]["dataset"]["held_out_examples"] = 60
    report["rows"][0]["exact_match"] = 0.5
    assert table_rows(report)[0][3] == "50.0%"
    assert "Warning" not in markdown(report)
