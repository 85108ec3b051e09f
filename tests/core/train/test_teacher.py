"""Distillation from a finished run (``--teacher``): the loss term, the checks on the teacher, and a run
trained with one through the real CLI."""

import copy
import json
import re
import shutil

import pytest
import torch

from kbit.core.errors import ConfigError
from kbit.core.runs.record import RunRecord, read_record, write_record
from kbit.core.runs.sections import DatasetInfo
from kbit.core.train.teacher import Teacher, teacher_model_dir
from tests.conftest import run_kbit
from tests.core.train.test_loss import _trainer
from tests.core.train.conftest import TRAIN


def _losses(trainer, inputs, teacher):
    from kbit.core.train.loss import labelled_loss

    with torch.no_grad():
        return labelled_loss(trainer.model, dict(inputs), teacher=teacher)


def test_the_kl_term_is_zero_for_the_model_itself_and_the_kl_to_another_teacher(tiny, tmp_path):
    trainer = _trainer(tiny, tmp_path)
    trainer.model.train()
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    alone = _losses(trainer, inputs, None)

    itself = tmp_path / "itself"
    copy.deepcopy(trainer.model).merge_and_unload().save_pretrained(itself)  # a copy: the trainer keeps its adapter
    same = _losses(trainer, inputs, Teacher(itself))
    torch.testing.assert_close(same.loss, alone.loss, rtol=1e-5, atol=1e-5)

    base = Teacher(tiny)  # the model before its (random, non-zero) adapter: a different distribution
    other = _losses(trainer, inputs, base)
    labels = inputs["labels"][:, 1:]
    scored = labels != -100
    student = trainer.model.get_base_model()(**{k: v for k, v in inputs.items() if k != "labels"}).logits[:, :-1][scored]
    teacher = base.log_probs({k: v for k, v in inputs.items() if k != "labels"}, scored)
    expected = torch.nn.functional.kl_div(torch.log_softmax(student.detach(), -1), teacher, log_target=True,
                                          reduction="sum") / scored.sum()
    assert expected > 1e-3
    torch.testing.assert_close(other.loss - alone.loss, expected, rtol=1e-4, atol=1e-6)
    assert other.correct == alone.correct and other.labelled == alone.labelled  # the statistics stay the model's own

    trainer.model.eval()  # the held-out loss is the plain cross-entropy
    torch.testing.assert_close(_losses(trainer, inputs, base).loss, _losses(trainer, inputs, None).loss)


def _fake_run(tmp_path, tiny, *, status="finished", fingerprint="f" * 16, merged=True, name="teacher"):
    run = tmp_path / name
    run.mkdir()
    if merged:
        shutil.copytree(tiny, run / "merged")
    write_record(run, RunRecord(kind="run", status=status, dataset=DatasetInfo(fingerprint=fingerprint)))
    return run


class _Data:
    def fingerprint(self):
        return "f" * 16


@pytest.mark.parametrize("case, message", [
    ({"status": "failed"}, "has not finished (status failed)"),
    ({"merged": False}, "has no merged model"),
    ({"fingerprint": "0" * 16}, "trained on other data or another split"),
])
def test_a_teacher_that_could_not_teach_this_run_is_refused(tiny, tmp_path, case, message):
    run = _fake_run(tmp_path, tiny, **case)
    with pytest.raises(ConfigError, match=re.escape(message)):
        teacher_model_dir(str(run), _Data(), vocab_size=json.loads((tiny / "config.json").read_text())["vocab_size"])


def test_a_folder_that_is_not_a_run_or_another_tokenizer_is_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="is not a kbit run"):
        teacher_model_dir(str(tiny), _Data(), vocab_size=1)
    run = _fake_run(tmp_path, tiny)
    with pytest.raises(ConfigError, match="must share the model's tokenizer"):
        teacher_model_dir(str(run), _Data(), vocab_size=7)
    vocab = json.loads((tiny / "config.json").read_text())["vocab_size"]
    assert teacher_model_dir(str(run), _Data(), vocab_size=vocab) == (run / "merged").resolve()
    config = json.loads((run / "merged" / "config.json").read_text())  # a merged model that ships its own code
    (run / "merged" / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "x.Config"}}))
    with pytest.raises(ConfigError, match=r"merged model ships its own code \(auto_map\)"):
        teacher_model_dir(str(run), _Data(), vocab_size=vocab)


@pytest.mark.slow
def test_a_run_trains_toward_its_teacher_and_records_it(qlora_run, tiny, tmp_path):
    teacher_dir, _ = qlora_run
    out = tmp_path / "taught"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *TRAIN, "--max-new-tokens", "5",
                      "--teacher", str(teacher_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record, without = read_record(out), read_record(teacher_dir)
    assert record.config.teacher == str(teacher_dir.resolve())
    # the same settings and seed as the teacher's own run: only the KL term differs
    assert record.train.rank_adapter_digests != without.train.rank_adapter_digests
    assert "the training loss includes the KL to teacher" in " ".join(result.stdout.split())
    assert f"| distilled from | the merged model of run `{teacher_dir.name}` (`--teacher`) |" in (out / "README.md").read_text()

    refused = run_kbit("train", "--model", str(tiny), "--output", str(tmp_path / "other"), *TRAIN, "--seed", "1",
                       "--teacher", str(teacher_dir))
    assert refused.returncode == 2
    assert "trained on other data or another split" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "other").exists()

    own = tmp_path / "own"  # a copy: training over its own teacher must be refused, --overwrite or not
    shutil.copytree(teacher_dir, own)
    over = run_kbit("train", "--model", str(tiny), "--output", str(own), "--overwrite", *TRAIN, "--teacher", str(own))
    assert over.returncode == 2 and "which this command reads" in over.stderr, over.stderr[-2000:]
    assert read_record(own).train.rank_adapter_digests == without.train.rank_adapter_digests
