"""The embedded arith set and its rephrased held-out split."""


def test_the_rephrased_set_asks_the_held_out_sums_in_wordings_training_never_uses():
    import re

    from kbit.core.data.loading import load_task_data

    plain, rephrased = load_task_data("arith"), load_task_data("arith-rephrased")
    assert rephrased.train == plain.train and len(plain.held_out) == 100 and len(rephrased.held_out) == 1000
    train_shapes = {re.sub(r"\d+", "N", example.prompt[-1][1]) for example in plain.train}

    def shape(example):
        return re.sub(r"\d+", "N", example.prompt[-1][1])

    first_round = rephrased.held_out[:100]
    assert len({shape(e) for e in first_round}) == 10 and not {shape(e) for e in rephrased.held_out} & train_shapes
    for k in range(10):  # every round asks every held-out sum once, each in another wording than the rounds before
        for old, new in zip(plain.held_out, rephrased.held_out[100 * k:100 * (k + 1)]):
            assert new.answers == old.answers and sorted(re.findall(r"\d+", new.prompt[-1][1])) == sorted(re.findall(r"\d+", old.prompt[-1][1]))
    for index in range(100):
        assert len({shape(rephrased.held_out[100 * k + index]) for k in range(10)}) == 10
