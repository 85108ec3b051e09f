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
