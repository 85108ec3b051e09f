"""kbit's labelled-positions loss against trl's own ``SFTTrainer.compute_loss``: same loss, same
gradients, same logged metrics, on the tiny model, padded and padding-free, fp32 and bf16 autocast."""

import pytest
import torch


def _trainer(tiny, tmp_path, *, padding_free=False, bf16=False):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from kbit.core.train.trainer import KbitSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    torch.manual_seed(0)
    # Non-zero B as well as A, so every adapter weight gets a gradient worth comparing.
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False))
    rows = [{"prompt": [{"role": "user", "content": f"what is {a} + {b}?"}],
             "completion": [{"role": "assistant", "content": str(a + b)}]} for a, b in [(12, 7), (3, 45), (60, 18), (9, 9)]]
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=bf16, per_device_train_batch_size=4, max_length=None if padding_free else 64,
                     padding_free=padding_free, report_to=[], seed=0)
    return KbitSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          adapter_dtype=torch.float32)


def _loss_and_grads(trainer, inputs, num_items_in_batch):
    trainer.model.zero_grad()
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=num_items_in_batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    metrics = {k: trainer._metrics["train"][k][-1] for k in ("entropy", "mean_token_accuracy", "num_tokens")}
    return loss.detach(), grads, metrics


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_labelled_loss_equals_trl_loss_and_gradients(tiny, tmp_path, padding_free, bf16, num_items_in_batch):
    trainer = _trainer(tiny, tmp_path, padding_free=padding_free, bf16=bf16)
    assert trainer.scores_labelled_positions_only
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert ("attention_mask" in inputs) is not padding_free
    assert (inputs["labels"] != -100).sum() < inputs["labels"].numel() / 2  # completion-only: most positions unlabelled

    ours = _loss_and_grads(trainer, inputs, num_items_in_batch)
    trainer._total_train_tokens = 0
    trainer.scores_labelled_positions_only = False
    theirs = _loss_and_grads(trainer, inputs, num_items_in_batch)

    tolerance = {"rtol": 2e-2, "atol": 1e-3} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(ours[0], theirs[0], **tolerance)
    assert ours[1].keys() == theirs[1].keys() and len(ours[1]) > 0
    for name in ours[1]:
        torch.testing.assert_close(ours[1][name], theirs[1][name], **tolerance, msg=name)
    assert ours[2]["num_tokens"] == theirs[2]["num_tokens"]
    assert ours[2]["mean_token_accuracy"] == pytest.approx(theirs[2]["mean_token_accuracy"])
    assert ours[2]["entropy"] == pytest.approx(theirs[2]["entropy"], rel=2e-2 if bf16 else 1e-5)


def test_a_soft_capped_head_keeps_trls_path(tiny, tmp_path):
    trainer = _trainer(tiny, tmp_path)
    trainer.model.get_base_model().config.final_logit_softcapping = 30.0
    assert not trainer._plain_token_loss()
