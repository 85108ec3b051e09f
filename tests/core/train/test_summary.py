"""The lines ``kbit train`` prints for the variants a run scored."""

from kbit.core.runs.sections import Scores
from kbit.core.train.summary import held_out_lines, variant_lines


def _variant(hits, items, model):
    return {"model": model, "items": items, "exact_match": hits / items, "exact_match_hits": hits,
            "exact_match_ci95": [0.0, 1.0]}


def test_every_scored_variant_gets_a_line_with_counts_below_30_items_and_rates_above():
    metrics = {"variants": {"adapter": _variant(3, 4, "the trained adapter"), "merged": _variant(3, 4, "merged/ as saved"),
                            "gguf q4_1": _variant(2, 4, "gguf/x-q4_1.gguf (its export check)")}}
    lines = variant_lines(Scores.from_dict(metrics))
    assert lines[0].startswith("adapter    3/4 (75%, 95% CI ") and lines[0].endswith("the trained adapter")
    assert lines[2].startswith("gguf q4_1  2/4 (50%, 95% CI ")
    many = variant_lines(Scores.from_dict({"variants": {"adapter": _variant(45, 50, "a"), "quantized": _variant(40, 50, "q")}}))
    assert many[1].startswith("quantized  80.0% (95% CI ")


def test_a_run_that_ships_only_its_adapter_prints_no_variant_lines():
    assert variant_lines(Scores.from_dict({"variants": {"adapter": _variant(1, 4, "a")}})) == []
    assert variant_lines(Scores.from_dict({})) == []  # a run of kbit 0.2


def test_too_few_held_out_items_name_the_limit_that_bound_them():
    scored = Scores.from_dict({"before": {"items": 6, "exact_match": 0.0, "exact_match_hits": 0},
                               "after": {"items": 6, "exact_match": 0.5, "exact_match_hits": 3}})
    _, split_smaller = held_out_lines(scored, eval_limit=10)  # the split had 6: --eval-limit cannot add any
    assert "--held-out 30" in split_smaller and "--eval-limit" not in split_smaller
    _, limited = held_out_lines(scored, eval_limit=6, held_out=50)
    assert "raise --eval-limit to 30" in limited
    _, both = held_out_lines(scored, eval_limit=6, held_out=6)  # the limit and the split alike
    assert "--held-out 30" in both and "--eval-limit" not in both


def test_the_speed_line_says_when_it_is_one_process_of_several():
    from kbit.core.runs.sections import Training
    from kbit.core.train.summary import speed_line

    figures = {"tokens_per_s": 3430.0, "step_seconds": 0.5, "achieved_gflops": 1.2}
    assert "one process" not in speed_line(Training(world_size=1, **figures))
    assert speed_line(Training(world_size=2, **figures)).endswith("; figures of one process of 2")
