"""matplotlib for kbit's figures (loss.png, report.png): headless, with fonts for names in any script."""

from __future__ import annotations

import warnings
from typing import Any

# Fonts that cover scripts DejaVu Sans lacks (CJK, Arabic …), used where installed: matplotlib falls back glyph
# by glyph along the family list (a run may be named 日本語モデル).
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans JP", "Noto Sans SC", "WenQuanYi Zen Hei",
                  "Droid Sans Fallback", "Noto Sans Arabic", "Noto Sans Hebrew", "Arial Unicode MS", "Noto Sans")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, its font family DejaVu Sans then the installed ``FALLBACK_FONTS``.

    A character no installed font has is drawn as a box; matplotlib's warning for each one is not shown, since
    the figure is all it affects (the console and the reports keep the text whole).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", *(name for name in FALLBACK_FONTS if name in installed)]
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    return plt
