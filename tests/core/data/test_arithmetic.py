"""The embedded arith set and its rephrased held-out split."""


def test_the_rephrased_set_asks_the_held_out_sums_in_wordings_training_never_uses():
    import re

    from kbit.core.data.loading import load_task_data

    plain, rephrased = load_task_data("arith"), load_task_data("arith-rephrased")
    assert rephrased.train == plain.train and len(rephrased.held_out) == len(plain.held_out) == 100
    train_shapes = {re.sub(r"\d+", "N", example.prompt[-1][1]) for example in plain.train}
    shapes = {re.sub(r"\d+", "N", example.prompt[-1][1]) for example in rephrased.held_out}
    assert len(shapes) == 10 and not shapes & train_shapes
    for old, new in zip(plain.held_out, rephrased.held_out):
        assert new.answers == old.answers and sorted(re.findall(r"\d+", new.prompt[-1][1])) == sorted(re.findall(r"\d+", old.prompt[-1][1]))
