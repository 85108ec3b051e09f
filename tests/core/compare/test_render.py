"""The comparison's tables: a rate scored on few items is shown as hits/items with its interval, and said."""

from __future__ import annotations

from kbit.core.compare.render import markdown, option_notes, table_rows


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


def test_an_option_a_method_refused_is_not_said_to_have_applied_to_it():
    report = _report(limit=100)
    report["settings"]["options"] = {"init": "loftq"}
    report["methods"] = [
        {"method": "lora", "options": {"init": "loftq"}, "status": "failed",
         "reason": "-o init=loftq: method 'lora' trains on the unquantized weights, so there is no quantization error"},
        {"method": "qlora", "options": {"init": "loftq"}, "status": "finished"}]
    assert option_notes(report) == ["- `-o init=loftq`: applied to qlora; refused by lora (see its row)"]


def test_one_learning_rate_is_said_beside_the_budget():
    report = _report(limit=100)
    assert "each method at its own learning rate" in markdown(report)
    report["settings"]["lr"] = 0.005
    assert "(seed 0, learning rate 0.005)" in markdown(report)


def test_names_stay_text_and_the_command_stays_one_safe_shell_line():
    report = _report(limit=100)
    name = "d<b onmouseover=x>X`$(id)`[l](http:e.vil)|p\n## H.csv"
    report["settings"]["dataset"]["name"] = name
    report["command"] = "kbit compare --dataset 'x```\n<script>.csv'"
    text = markdown(report)
    assert "\n## H" not in text and "<b " not in text and "<script>" not in text.split("````bash")[0]
    assert "on d&lt;b onmouseover=x>X\\`$(id)\\`\\[l\\](http:e.vil)|p ## H.csv, 3 steps per method" in text
    assert "Reproduce:\n\n````bash\nkbit compare --dataset 'x```\n<script>.csv'\n````" in text
