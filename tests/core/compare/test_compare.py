"""``kbit compare`` on the tiny model: a row per method, a failing method in its row, reuse on a second call."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kbit.core.cli import main
from kbit.core.compare.pipeline import run_compare
from kbit.core.compare.plan import build_compare_config
from kbit.core.errors import ConfigError

SMALL = {"max_steps": 1, "batch_size": 2, "max_examples": 20, "limit": 3}


def _config(tiny: Path, out: Path, methods: str, **options: str):
    return build_compare_config(methods=methods, model=str(tiny), options=options, out=str(out), **SMALL)


@pytest.fixture(scope="module")
def compared(kbit_tiny_model, tmp_path_factory):
    """lora and qlora trained and evaluated; bnb-int8 given an option value it refuses."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    lines: list[str] = []
    config = _config(kbit_tiny_model, out, "lora,qlora,bnb-int8", r="4", threshold="-1")
    result = run_compare(config, progress=lines.append)
    return result, lines


def _entry(report: dict, method: str) -> dict:
    return next(m for m in report["methods"] if m["method"] == method)


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` but the comparison's own report files."""
    reports = ("report.json", "report.md", "report.png")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not (p.parent == root and p.name in reports)}


@pytest.mark.slow
def test_each_method_has_a_row_per_variant_and_the_base_is_scored_once(compared):
    result, _ = compared
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["kind"] == "compare" and report["status"] == "finished"
    variants = [(r["method"], r["variant"]) for r in report["rows"]]
    assert variants == [("base", "base"), ("lora", "adapter"), ("lora", "merged"), ("qlora", "adapter"),
                        ("qlora", "merged"), ("bnb-int8", None)]
    for row in report["rows"][:-1]:
        assert row["items"] == 3 and row["loss"] > 0 and row["disk_bytes"] > 0, row
    qlora_adapter = report["rows"][3]
    # NF4 base vs float32 (on the tiny model NF4's per-layer state adds up to ~2 bits, see test_cli)
    assert qlora_adapter["bits_per_weight"] < 8 < report["rows"][1]["bits_per_weight"]
    for method in ("lora", "qlora"):
        entry = _entry(report, method)
        assert entry["status"] == "finished" and entry["action"] == "trained"
        assert entry["train_s"] > 0 and entry["quantize_s"] is None
        assert json.loads((result.out_dir / "runs" / method / "kbit.json").read_text())["status"] == "finished"
    markdown = (result.out_dir / "report.md").read_text()
    assert "| qlora | adapter |" in markdown and "| base | base |" in markdown
    assert (result.out_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_failing_method_is_reported_in_its_row_and_the_others_go_on(compared):
    result, lines = compared
    failed = _entry(result.report, "bnb-int8")
    assert failed["status"] == "failed" and failed["rows"] == []
    assert failed["reason"].startswith("invalid value '-1' for option 'threshold' for method bnb-int8")
    assert "\n" not in failed["reason"]
    assert "| bnb-int8 | — |" in (result.out_dir / "report.md").read_text()
    assert any(line.startswith("bnb-int8: failed: invalid value '-1'") for line in lines)
    assert not result.every_method_failed and result.failed == [failed]


@pytest.mark.slow
def test_options_go_only_to_the_methods_that_have_them(compared):
    result, _ = compared
    for method in ("lora", "qlora"):
        record = json.loads((result.out_dir / "runs" / method / "kbit.json").read_text())
        assert record["config"]["options"] == {"r": "4"}
        assert _entry(result.report, method)["skipped_options"] == ["threshold"]
    assert "`-o threshold=-1`: refused by bnb-int8 (see its row); skipped for lora, qlora (no such option)" in (
        result.out_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_second_call_reuses_the_runs_and_their_evaluations(compared, kbit_tiny_model, monkeypatch):
    result, _ = compared
    before = _digests(result.out_dir)
    import kbit.core.evaluate.pipeline as evaluation
    import kbit.core.train.pipeline as training

    def refuse(*args, **kwargs):
        raise AssertionError("a finished comparison trained or evaluated again")

    monkeypatch.setattr(training, "run_training", refuse)
    monkeypatch.setattr(evaluation, "run_eval", refuse)
    lines: list[str] = []
    again = run_compare(_config(kbit_tiny_model, result.out_dir, "lora,qlora", r="4"), progress=lines.append)
    assert [(m["method"], m["action"], m["eval_reused"]) for m in again.report["methods"]] == [
        ("lora", "reused", True), ("qlora", "reused", True)]
    assert f"lora: reusing the finished run {result.out_dir / 'runs' / 'lora'}" in lines[0]
    assert "not training it again" in lines[0]
    assert _digests(result.out_dir) == before  # no run and no evaluation was written again
    measured = ("method", "variant", "loss", "exact_match", "bits_per_weight", "memory_bytes", "disk_bytes", "train_s")
    assert [[r.get(k) for k in measured] for r in again.report["rows"]] == [
        [r.get(k) for k in measured] for r in result.report["rows"][:5]]
    assert "0 trained, 2 reused (not trained again)" in (result.out_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_changed_option_is_refused_rather_than_mixing_runs(compared, kbit_tiny_model, capsys):
    result, _ = compared
    before = _digests(result.out_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--methods", "lora", "--model", str(kbit_tiny_model), "--out", str(result.out_dir),
              "--max-steps", "2", "--batch-size", "2", "--max-examples", "20", "--limit", "3", "-o", "r=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "holds a run with other settings (max_steps 1, not 2); pass --overwrite to retrain it" in err[0]
    assert _digests(result.out_dir) == before


@pytest.mark.slow
def test_the_command_fails_only_when_every_method_failed(compared, kbit_tiny_model, tmp_path, capsys):
    out = tmp_path / "all-failed"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--methods", "bnb-int8", "--model", str(kbit_tiny_model), "--out", str(out),
              "--max-steps", "1", "--max-examples", "20", "--limit", "3", "-o", "threshold=-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert err[-1].startswith("kbit: error: every method failed (bnb-int8: invalid value '-1' for option 'threshold'")
    assert err[-1].endswith(f"see {out.resolve() / 'report.md'}")
    assert json.loads((out / "report.json").read_text())["methods"][0]["status"] == "failed"


def test_a_stopped_comparison_marks_the_method_it_stopped_in(kbit_tiny_model, tmp_path):
    def stop_at_training(line: str) -> None:
        if ": training" in line:
            raise KeyboardInterrupt

    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        run_compare(_config(kbit_tiny_model, out, "lora,qlora"), progress=stop_at_training)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert [m["status"] for m in report["methods"]] == ["interrupted", "pending"]
    markdown = (out / "report.md").read_text()
    assert "| lora | — |" in markdown and "interrupted (kbit compare again continues it)" in markdown
    assert "not reached" in markdown


def test_a_held_out_file_is_every_methods_held_out_split(kbit_tiny_model, tmp_path):
    from kbit.core.compare.plan import plan_compare

    def rows(name, numbers):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "completion": str(i + 1)}) + "\n" for i in numbers))
        return path

    train, valid = rows("train.jsonl", range(20)), rows("valid.jsonl", range(50, 55))
    config = build_compare_config(methods="lora,qlora", model=str(kbit_tiny_model), dataset=str(train),
                                  held_out=str(valid), turns="all", out=str(tmp_path / "cmp"), **SMALL)
    plan = plan_compare(config)
    assert (plan.dataset["train_examples"], plan.dataset["held_out_examples"]) == (20, 5)
    assert {(planned.train.held_out, planned.train.turns) for planned in plan.methods} == {(str(valid), "all")}
    from kbit.core.compare.report import command_line

    assert f"--held-out {valid} --turns all" in command_line(plan)  # the report's "Reproduce" line


def test_one_learning_rate_for_every_method_or_each_its_own(kbit_tiny_model, tmp_path):
    from kbit.core.compare.plan import plan_compare
    from kbit.core.compare.report import command_line

    def lrs(**extra):
        plan = plan_compare(build_compare_config(methods="qlora,qat", model=str(kbit_tiny_model),
                                                 out=str(tmp_path / "cmp"), **SMALL, **extra))
        return {planned.name: planned.train.lr for planned in plan.methods}, command_line(plan)

    assert lrs() == ({"qlora": None, "qat": None}, lrs()[1])  # None: each method trains at its own default
    chosen, command = lrs(lr=1e-3)
    assert chosen == {"qlora": 1e-3, "qat": 1e-3} and "--lr 0.001" in command
    with pytest.raises(ConfigError, match="lr"):
        build_compare_config(lr=-1)
    from kbit.core.compare.plan import default_out_dir

    assert default_out_dir("m", "d", 20, 1e-3).name == "m-d-20steps-lr0.001"  # beside the comparison at each own rate
    assert default_out_dir("m", "d", 20).name == "m-d-20steps"
