"""The report writer: every file written, the best value per column marked, gaps stated."""

from __future__ import annotations

import json

from kbit.core.evaluate.report import COLUMNS, best_rows, markdown, write_report

ROWS = [
    {"model": "m", "variant": "base", "method": None, "dataset": "arith", "items": 2, "loss": 2.0, "perplexity": 7.389,
     "exact_match": 0.5, "memory_bytes": 4 << 20, "bits_per_weight": 32.0, "tokens_per_s": 10.0},
    {"model": "m", "variant": "adapter", "method": "qlora", "dataset": "arith", "items": 2, "loss": 1.0, "perplexity": 2.718,
     "exact_match": 0.5, "memory_bytes": 1 << 20, "bits_per_weight": 4.127, "tokens_per_s": 5.0},
]
REPORT = {"created": "now", "settings": {"limit": 2, "max_new_tokens": 8, "seed": 0}, "rows": ROWS,
          "gaps": [{"label": "m", "variant": "quantized", "source": "runs/m", "reason": "the run has no quantized/ artifact"}]}


def test_best_per_column_and_ties_are_not_marked():
    by_key = {c.key: c for c in COLUMNS}
    assert best_rows(ROWS, by_key["loss"]) == {1}
    assert best_rows(ROWS, by_key["tokens_per_s"]) == {0}
    assert best_rows(ROWS, by_key["bits_per_weight"]) == {1}
    assert best_rows(ROWS, by_key["exact_match"]) == set()  # every row ties
    assert best_rows(ROWS[:1], by_key["loss"]) == set()  # nothing to compare against


def test_write_report_writes_every_file_atomically(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    predictions = [{"model": "m", "variant": "base", "prompt": "p", "prediction": "1", "gold": "2", "scores": {"exact_match": 0.0}}] * 3
    write_report(out, REPORT, predictions)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "report.json", "report.md", "report.png"]
    assert not list(tmp_path.glob(".report.*"))  # no staging folder left behind
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 1 and len(data["rows"]) == 2
    assert [json.loads(line)["gold"] for line in (out / "predictions.jsonl").read_text().splitlines()] == ["2"] * 3
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    adapter_line = next(line for line in md.splitlines() if "| adapter |" in line)
    base_line = next(line for line in md.splitlines() if "| base |" in line)
    assert "**1*** " in adapter_line and "**4.127***" in adapter_line and "**1.0 MiB***" in adapter_line
    assert "**10.0***" in base_line and "50.0%" in base_line and "**50.0%" not in md
    assert "m — quantized: not evaluated; the run has no quantized/ artifact" in md


def test_markdown_without_gaps_says_so():
    assert "None: every requested variant was evaluated." in markdown({**REPORT, "gaps": []})


SMALL = [{**ROWS[0], "items": 4, "exact_match": 0.5, "exact_match_hits": 2, "exact_match_ci95": [0.15, 0.85]},
         {**ROWS[1], "items": 4, "exact_match": 0.25, "exact_match_hits": 1, "exact_match_ci95": [0.0456, 0.6994]}]


def test_few_items_are_shown_with_their_interval_never_ranked_and_warned_about():
    by_key = {c.key: c for c in COLUMNS}
    assert best_rows(SMALL, by_key["exact_match"]) == set()  # 2/4 against 1/4 is no ranking
    assert best_rows(SMALL, by_key["loss"]) == {1}  # loss is over every answer token, still compared
    warning = "arith: 4 held-out items: too few items to compare"
    md = markdown({**REPORT, "rows": SMALL, "warnings": [warning]})
    assert "| 2/4 (50%, 95% CI 15–85%) |" in md and "| 1/4 (25%, 95% CI 5–70%) |" in md
    assert "50.0%" not in md and "25.0%" not in md  # no bare percentage of four items
    assert f"> **Warning:** {warning}" in md


def test_budget_and_speed_are_described():
    report = {**REPORT, "settings": {**REPORT["settings"], "max_new_tokens": "per dataset",
                                     "speed": {"tokens_per_s": "exactly 32 new tokens", "forward_tokens_per_s": "one pass"}},
              "datasets": [{"name": "arith", "generation": {"max_new_tokens": 16, "chosen_by": "training completions",
                                                            "detail": "95th percentile …", "stop_tokens": ["<|im_end|>"]},
                            "scoring": "math-verify 0.9.0"}],
              "rows": [{**ROWS[0], "answers_cut": 2, "forward_tokens_per_s": 100.0}]}
    md = markdown(report)
    assert "greedy answers until the end-of-turn token" in md
    assert "- arith: at most 16 new tokens (training completions: 95th percentile …), stopping at <|im_end|>; scored with math-verify 0.9.0" in md
    assert "- m base: 2 of 2 answers reached the cap" in md
    assert "Tokens/s: exactly 32 new tokens." in md and "Forward tok/s: one pass." in md
    assert "Memory counts" in md and "Size on disk" not in md  # notes of the columns the table has only
    assert "Forward tok/s" not in markdown({**report, "rows": ROWS})


def test_models_of_other_tokenizers_have_their_own_budget_line():
    budget = {"chosen_by": "the held-out items' completions", "detail": "…", "stop_tokens": ["<|im_end|>"]}
    report = {**REPORT, "datasets": [{"name": "qa", "generation": {**budget, "max_new_tokens": 120, "models": ["tiny base"]},
                                      "other_generation": [{**budget, "max_new_tokens": 36, "models": ["smol gguf@llama.cpp"]}]}]}
    md = markdown(report)
    assert "- qa: at most 120 new tokens for tiny base (" in md and "- qa: at most 36 new tokens for smol gguf@llama.cpp (" in md


def test_rows_of_different_datasets_are_ranked_each_among_their_own():
    loss = next(c for c in COLUMNS if c.key == "loss")
    rows = [{"model": "a", "dataset": "qa", "loss": 2.0, "items": 50}, {"model": "b", "dataset": "qa", "loss": 1.0, "items": 50},
            {"model": "c", "dataset": "arith", "loss": 0.5, "items": 50}, {"model": "d", "dataset": "arith", "loss": 0.7, "items": 50}]
    assert best_rows(rows, loss) == {1, 2}  # not c alone: its loss is on other text
    assert best_rows(rows[1:3], loss) == set()  # one row each: nothing to compare


def test_values_that_print_alike_are_both_best():
    loss = next(c for c in COLUMNS if c.key == "loss")
    rows = [{"model": "a", "loss": 4.27701, "items": 50}, {"model": "b", "loss": 4.27699, "items": 50},
            {"model": "c", "loss": 4.5, "items": 50}]
    assert best_rows(rows, loss) == {0, 1}  # both print as 4.277


def test_names_from_the_users_files_stay_text_in_report_md():
    name = "d <img src=x onerror=alert(1)> |x|\n## H"
    md = markdown({**REPORT, "rows": [{**ROWS[0], "dataset": name}], "warnings": [f"{name}: few items"]})
    assert "| d &lt;img src=x onerror=alert(1)> \\|x\\| ## H |" in md
    assert "> **Warning:** d &lt;img src=x onerror=alert(1)> |x| ## H: few items" in md
    assert "\n## H" not in md and "<img" not in md
    assert "<|im_end|>" in markdown({**REPORT, "rows": [{**ROWS[0], "dataset": "<|im_end|>"}]}).replace("\\|", "|")


def test_gaps_and_runtime_notes_keep_names_as_text():
    name = "m <img src=x onerror=alert(1)>\n## H"
    rows = [{**ROWS[0], "model": name, "runtime": "llama.cpp", "reference": name}]
    md = markdown({**REPORT, "rows": rows, "gaps": [{"label": name, "variant": "merged", "reason": "none"}]})
    assert "<img" not in md and "\n## H" not in md
