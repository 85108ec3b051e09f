"""kbit's figures: a name in another script is drawn without a warning per character."""

from __future__ import annotations

import warnings

from kbit.core.train.outputs import write_loss_plot


def test_a_title_in_any_script_draws_without_warnings(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_loss_plot(tmp_path / "loss.png", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], "日本語モデル ترجم")
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert not [w for w in caught if "missing from font" in str(w.message)]
