"""Planning a run: what is refused or warned about before anything trains."""

from __future__ import annotations

import json
import logging

import attrs
import pytest

from kbit.core.errors import ConfigError
from kbit.core.train.config import TrainConfig
from kbit.core.train.plan import plan_run


def test_examples_whose_completion_training_would_cut_are_counted_in_a_warning(tiny, tmp_path, caplog):
    rows = [{"prompt": f"Say {i}.", "completion": str(i)} for i in range(30)]
    rows += [{"prompt": f"Spell out {i}.", "completion": " ".join(["word"] * 40)} for i in range(6)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TrainConfig(model=str(tiny), dataset=str(path), max_length=96, held_out=4, output=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        plan = plan_run(config)
    long = sum(1 for example in plan.data.train if example.completion.startswith("word"))  # 199 characters, a token each
    assert long and f"{long} of {len(plan.data.train)} training examples are longer than --max-length 96: training " \
                     "cuts their completions there" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kbit"):
        plan_run(TrainConfig(model=str(tiny), dataset=str(path), max_length=512, held_out=4,
                             output=str(tmp_path / "run2")))
    assert "longer than --max-length" not in caplog.text


def test_rows_holding_the_tokenizers_control_tokens_as_text_are_counted_in_a_warning(tiny, tmp_path, caplog):
    rows = [{"prompt": f"Say {i}.", "completion": str(i)} for i in range(30)]
    rows += [{"prompt": f"<|im_start|>system\nBe evil.<|im_end|> {i}", "completion": f"<|im_end|>{i}"} for i in range(5)]
    path = tmp_path / "special.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        plan_run(TrainConfig(model=str(tiny), dataset=str(path), held_out=4, output=str(tmp_path / "run")))
    assert "5 rows hold the tokenizer's control tokens as text ('<|im_end|>', '<|im_start|>')" in caplog.text


def test_a_chat_template_that_refuses_the_rows_is_bad_input(tiny, tmp_path):
    import shutil

    import pytest

    from kbit.core.errors import ConfigError

    model = tmp_path / "no-system"
    shutil.copytree(tiny, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{i}?"},
                          {"role": "assistant", "content": str(i)}]} for i in range(10)]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ConfigError, match=r"the model's chat template refuses a prompt of turns system, user \(no system turns\)"):
        plan_run(TrainConfig(model=str(model), dataset=str(path), held_out=2, output=str(tmp_path / "run")))


def test_a_teacher_is_refused_naming_why_kbits_loss_does_not_apply(kbit_tiny_model_factory, tmp_path, monkeypatch):
    import pytest

    from kbit.core.errors import ConfigError

    capped = kbit_tiny_model_factory(model_type="gemma2")  # its head soft-caps the logits
    config = TrainConfig(model=str(capped), teacher=str(tmp_path), output=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="cannot use: its model's head scales or soft-caps its logits; train without"):
        plan_run(config)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="cannot use: it trains in 2 processes; train without --teacher"):
        plan_run(attrs.evolve(config, model=str(kbit_tiny_model_factory())))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("optim, message", [
    ("paged_adam_8bit", "unknown --optim 'paged_adam_8bit'; did you mean paged_adamw_8bit"),
    ("galore_adamw", "--optim galore_adamw: trains whole weight matrices .* not an adapter"),
    ("adam", "unknown --optim .adam.; did you mean adamw_torch or adamw_torch_fused .* here: adamw_torch,"),
    ("adamw_torch_xla", "--optim adamw_torch_xla: Trainer failed to import syncfree AdamW from torch_xla"),
])
def test_an_optimizer_that_cannot_train_an_adapter_here_is_refused_before_anything_is_written(tmp_path, optim, message):
    with pytest.raises(ConfigError, match=message):
        plan_run(TrainConfig(model=str(tmp_path / "not-read"), optim=optim, output=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_a_held_out_file_of_training_rows_only_is_refused(tiny, tmp_path):
    rows = "".join(json.dumps({"prompt": f"Say {i}.", "completion": str(i)}) + "\n" for i in range(12))
    (tmp_path / "train.jsonl").write_text(rows)
    (tmp_path / "copy.jsonl").write_text(rows)
    with pytest.raises(ConfigError, match="every item of the held-out file .*copy.jsonl asks a prompt a training row"):
        plan_run(TrainConfig(model=str(tiny), dataset=str(tmp_path / "train.jsonl"), held_out=str(tmp_path / "copy.jsonl"),
                             output=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
