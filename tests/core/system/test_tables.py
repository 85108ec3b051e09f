"""Result tables: side by side where they fit the terminal, turned where they do not, never squeezed."""

import pytest

from kbit.core.system.tables import print_results

HEADERS = ["model", "variant", "items", "loss", "perplexity", "exact match", "memory", "bits/weight", "tokens/s"]
ROWS = [
    ["tiny", "base", "9", "4.193", "66.25", "0/9 (0%, 95% CI 0–30%)", "0.3 MiB*", "32", "216.1"],
    ["tiny-ml_SFT_LoRa64_QLORA_w4_headfp32", "adapter", "9", "4.126", "61.9", "0/9 (0%, 95% CI 0–30%)", "0.6 MiB",
     "[bold green]4.353*[/bold green]", "262.0"],
    ["tiny-ml_SFT_LoRa64_QLORA_w4_headfp32", "merged", "9", "4.125*", "61.89*", "3/9 (33%, 95% CI 12–65%)",
     "0.3 MiB*", "32", "17256.7*"],
]


def _print(monkeypatch, capsys, columns: str | None) -> list[str]:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    print_results("kbit eval", HEADERS, ROWS, labels=2, caption="* the best of each measure")
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("columns", ["60", "80", "100"])
def test_a_narrow_terminal_gets_every_value_whole(monkeypatch, capsys, columns):
    lines = _print(monkeypatch, capsys, columns)
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= int(columns)
    assert "…" not in text  # rich's mark of a squeezed cell
    for value in ("0/9 (0%, 95% CI 0–30%)", "3/9 (33%, 95% CI 12–65%)", "17256.7*", "4.353*", "perplexity",
                  "bits/weight", "adapter", "merged"):
        assert value in text
    labels = "".join(line.strip("┃│ ") for line in lines)
    assert labels.count("tiny-ml_SFT_LoRa64_QLORA") == 2  # each run's name, folded perhaps, but there


def test_a_table_that_fits_is_side_by_side(monkeypatch, capsys):
    lines = _print(monkeypatch, capsys, "200")
    header = next(line for line in lines if "model" in line)
    assert all(title in header for title in HEADERS)
    assert sum("tiny-ml_SFT_LoRa64_QLORA_w4_headfp32" in line for line in lines) == 2  # one line per row


def test_piped_output_keeps_one_line_per_row(monkeypatch, capsys):
    lines = _print(monkeypatch, capsys, None)
    assert sum("tiny-ml_SFT_LoRa64_QLORA_w4_headfp32" in line and "17256.7*" in line for line in lines) == 1


def test_a_table_without_rows_prints_its_header(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "60")
    print_results("kbit eval", HEADERS, [], labels=2)
    assert "kbit eval" in capsys.readouterr().out
