"""A table of results on the console: side by side where it fits, turned on its side where it does not.

kbit eval and kbit compare print 10–15 columns, wider than an 80-column terminal; rich would squeeze them until a
cell reads "per…" and the model names vanish. Where the rows do not fit side by side, the table is turned: one line
per column title, one column per row, as many rows to a table as the terminal holds. Piped output (without
``COLUMNS``) is always side by side, each row on one line, for grep.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

LABEL_WIDTH = 24  # a row's label (a run name) may fold to this width; numbers never fold


def table_console(renderable: Any) -> Any:
    """A rich console to print ``renderable`` on: piped output (without ``COLUMNS``) as wide as its rows, so each
    stays on one line for grep; a terminal's own width."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        widest = console.measure(renderable, options=console.options.update_width(1000)).maximum
        console.width = max(console.width, 160, widest)
    return console


def print_results(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, labels: int,
                  caption: str | None = None) -> Any:
    """Print ``rows`` (cells as rich markup) under ``headers``; the first ``labels`` cells of a row name it. Returns
    the console it printed on, for the lines that follow the table."""
    from rich.table import Table

    wide = Table(title=title, caption=caption)
    for i, header in enumerate(headers):
        label = i < labels
        wide.add_column(header, overflow="fold", no_wrap=not label and header != headers[-1],
                        justify="left" if label else "right")
    for row in rows:
        wide.add_row(*row)
    console = table_console(wide)
    if not rows or _width(headers, rows, labels) <= console.width:
        console.print(wide)
        return console
    names = ["\n".join(dict.fromkeys(c for c in row[:labels] if _plain(c))) for row in rows]  # "base base": once
    per_table = len(rows)
    while per_table > 1 and _width(["", *names[:per_table]], [[h, *(row[i] for row in rows[:per_table])]
                                                              for i, h in enumerate(headers) if i >= labels],
                                   0, fold_header=True) > console.width:
        per_table -= 1
    for start in range(0, len(rows), per_table):
        chunk = rows[start:start + per_table]
        turned = Table(title=title if start == 0 else None, caption=caption if start + per_table >= len(rows) else None)
        turned.add_column("", no_wrap=True)
        for name, row in zip(names[start:start + per_table], chunk):
            turned.add_column(name, overflow="fold", justify="right",
                              max_width=max(LABEL_WIDTH, *(_cell_width(c) for c in row[labels:])))
        for i, header in enumerate(headers[labels:], start=labels):
            turned.add_row(header, *(row[i] for row in chunk))
        console.print(turned)
    return console


def _plain(markup: str) -> str:
    from rich.text import Text

    return Text.from_markup(markup).plain


def _cell_width(text: str, fold: bool = False) -> int:
    """Columns ``text`` (rich markup, perhaps several lines) takes; at most ``LABEL_WIDTH`` where it may fold."""
    from rich.cells import cell_len

    widest = max((cell_len(line) for line in _plain(text).splitlines()), default=0)
    return min(widest, LABEL_WIDTH) if fold else widest


def _width(header: Sequence[str], body: Sequence[Sequence[str]], labels: int, *, fold_header: bool = False) -> int:
    """The width a boxed rich table needs for ``header`` over ``body`` with its first ``labels`` columns (and, with
    ``fold_header``, every header cell but the first) folded to ``LABEL_WIDTH``."""
    widths = [max(_cell_width(title, i < labels or (fold_header and i > 0)),
                  *(_cell_width(row[i], i < labels) for row in body)) for i, title in enumerate(header)]
    return sum(widths) + 3 * len(widths) + 1


def markdown_text(text: Any) -> str:
    """``text`` as inert markdown on one line: names in reports and cards come from the user's files and a model's
    metadata, so a line break cannot start a heading, brackets and backticks cannot open a link, an image or code, an
    entity stays text, and a ``<`` that would open an HTML tag is written ``&lt;`` (``<|im_end|>`` stays as it is)."""
    line = re.sub(r"[\\`\[\]]", lambda m: "\\" + m.group(0), " ".join(str(text).split()))
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", re.sub(r"&(?=#?[0-9A-Za-z]+;)", "&amp;", line))


def code_text(text: Any) -> str:
    """``text`` for inside an inline code span: on one line, a backtick (which would end the span) written ``'``."""
    return " ".join(str(text).split()).replace("`", "'")


def markdown_code(text: Any) -> str:
    """``text`` as an inline code span (``code_text``)."""
    return f"`{code_text(text)}`"


def markdown_row(cells: Sequence[Any]) -> str:
    """One row of a markdown table, each cell ``markdown_text`` with its pipes escaped."""
    return "| " + " | ".join(markdown_text(cell).replace("|", "\\|") for cell in cells) + " |"


def fenced(text: str, language: str = "") -> list[str]:
    """``text`` as the lines of a fenced code block whose fence no backtick run in it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, text, fence]
