"""When the held-out loss is measured during training."""

from types import SimpleNamespace

import pytest

from kbit.core.train.config import TrainConfig
from kbit.core.train.fit import EVAL_LOSS_ITEMS, held_out_loss_items, training_evaluation, warmup_steps


@pytest.mark.parametrize("settings, expected", [
    ({"max_steps": 100, "logging_steps": 10}, ("steps", 30)),  # about 4 times a run, on logging steps
    ({"max_steps": 3, "logging_steps": 10}, ("steps", 10)),  # a short run: the last step only
    ({"max_steps": 3, "logging_steps": 1}, ("steps", 1)),
    ({"max_steps": 40, "logging_steps": 5, "eval_steps": 7}, ("steps", 7)),  # the user's interval
    ({"max_steps": 40, "eval_steps": 0}, ("no", None)),
    ({"max_steps": 40, "eval_limit": 0}, ("no", None)),  # no held-out scoring: no held-out loss either
    ({"max_steps": 0, "epochs": 2}, ("epoch", None)),
])
def test_training_evaluation(settings, expected):
    assert training_evaluation(TrainConfig(**settings)) == expected


@pytest.mark.parametrize("eval_limit, held_out, expected", [
    (100, 100, EVAL_LOSS_ITEMS),  # the default run: a curve on the first items, not all 100
    (10, 100, 10),  # never more than the items scored after training
    (100, 5, 5),
    (0, 100, 0),
])
def test_the_held_out_loss_is_measured_on_the_first_scored_items(eval_limit, held_out, expected):
    plan = SimpleNamespace(config=TrainConfig(eval_limit=eval_limit), data=SimpleNamespace(held_out=list(range(held_out))))
    assert held_out_loss_items(plan) == list(range(expected))


@pytest.mark.parametrize("ratio, max_steps, expected", [
    (0.05, 100, 5), (0.05, 3, 1), (0.05, 1, 0), (0.5, 2, 1), (0.9, 4, 3), (0.0, 10, 0),
])
def test_warm_up_leaves_at_least_the_last_step_at_the_full_rate(ratio, max_steps, expected):
    assert warmup_steps(ratio, max_steps) == expected
