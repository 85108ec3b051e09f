"""Padding-free batches: no example attends to another (per-example losses equal padded ones), and
the auto decision."""

import pytest
import torch

from kbit.core.errors import ConfigError
from kbit.core.train.padding import (MIN_PADDING, attention_separates_packed_examples, decide_padding_free,
                                     expected_padding)

EXAMPLES = [[5, 20, 31, 40, 8, 9, 12], [7, 7, 60, 3], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [42, 43, 44]]


def _per_example_nll(model, batch, lengths, padding_free):
    """Summed next-token NLL of each example in a collated batch, in example order.

    Without a cache, as in training: with one, transformers reads no packed sequences from the positions."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    if padding_free:
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        return torch.stack([nll[0, s:s + n - 1].sum() for s, n in zip(starts, lengths)])
    return torch.stack([nll[i, :n - 1].sum() for i, n in enumerate(lengths)])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_free_per_example_losses_equal_padded_ones(tiny, attention):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32, attn_implementation=attention).eval()
    assert attention_separates_packed_examples(model)[0]
    rows = [{"input_ids": ids} for ids in EXAMPLES]
    lengths = [len(ids) for ids in EXAMPLES]
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    free = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert "attention_mask" not in free and free["input_ids"].shape == (1, sum(lengths))

    expected = _per_example_nll(model, padded, lengths, padding_free=False)
    torch.testing.assert_close(_per_example_nll(model, free, lengths, padding_free=True), expected, rtol=1e-5, atol=1e-5)

    # The control: the same row with positions that do not restart lets later examples attend to earlier ones.
    crossed = {"input_ids": free["input_ids"], "position_ids": torch.arange(sum(lengths))[None]}
    leaked = _per_example_nll(model, crossed, lengths, padding_free=True)
    assert torch.allclose(leaked[0], expected[0], atol=1e-5)  # the first example has nothing before it
    assert not torch.allclose(leaked[1:], expected[1:], atol=1e-3)


def test_an_attention_without_transformers_masks_is_not_trusted(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    model.config._attn_implementation = "my_custom_kernel"
    safe, why = attention_separates_packed_examples(model)
    assert not safe and "my_custom_kernel" in why
    assert decide_padding_free("auto", packing=False, longest=10, max_length=64, padding=0.5, attention=(safe, why)).value is False
    with pytest.raises(ConfigError, match="--padding-free true"):
        decide_padding_free("true", packing=False, longest=10, max_length=64, padding=0.5, attention=(safe, why))


def test_expected_padding():
    assert expected_padding([45] * 40, 4) == 0.0
    assert expected_padding([10, 30] * 20, 2) == pytest.approx(0.25, abs=0.1)  # mixed pairs pad 10 to 30
    assert expected_padding([], 4) == 0.0


@pytest.mark.parametrize("requested, padding, longest, packing, value, reason", [
    ("auto", 0.0, 50, False, False, "only 0% padding"),
    ("auto", MIN_PADDING + 0.01, 50, False, True, "auto: padded batches would be"),
    ("auto", 0.5, 300, False, False, "over --max-length 256"),
    ("auto", 0.5, 50, True, False, "--packing"),
    ("false", 0.5, 50, False, False, "requested"),
    ("true", 0.0, 50, False, True, "requested"),
])
def test_decide_padding_free(requested, padding, longest, packing, value, reason):
    decision = decide_padding_free(requested, packing=packing, longest=longest, max_length=256, padding=padding,
                                   attention=(True, "sdpa attention"))
    assert decision.value is value and reason in decision.reason


def test_true_with_an_example_over_max_length_is_refused():
    with pytest.raises(ConfigError, match="300 tokens, over --max-length 256"):
        decide_padding_free("true", packing=False, longest=300, max_length=256, padding=0.5, attention=(True, "sdpa"))
