"""``kbit eval`` end to end, and bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest

from kbit.core.cli import main
from tests.conftest import run_kbit


@pytest.mark.slow
def test_eval_a_run_writes_the_report_and_prints_the_table(tiny_run, tmp_path):
    out = tmp_path / "report"
    result = run_kbit("eval", str(tiny_run), "--limit", "3", "--max-new-tokens", "4", "--variant", "quantized",
                      "--variant", "adapter", "--variant", "merged", "--variant", "base", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kbit eval" in result.stdout and "bits/weight" in result.stdout and "gap" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["base", "adapter", "merged"]
    assert [g["variant"] for g in report["gaps"]] == ["quantized"]
    base, adapter, merged = report["rows"]
    assert base["bits_per_weight"] == merged["bits_per_weight"] == 32
    # NF4: 4 bits, plus state per layer (block scales, a 256-entry code table) that the tiny model's
    # 64-wide layers make large (bitsandbytes' CPU library, where it loads, keeps more of it).
    assert 4 < adapter["bits_per_weight"] < 8 and adapter["memory_bytes"] < base["memory_bytes"]
    assert all(r["items"] == 3 and r["loss"] > 0 and r["tokens_per_s"] > 0 for r in report["rows"])
    assert abs(adapter["loss"] - merged["loss"]) < 0.05  # the merge keeps what the adapter learned
    stored = {name: sum(f.stat().st_size for f in (tiny_run / name).glob("*.safetensors")) for name in ("adapter", "merged")}
    assert merged["disk_bytes"] == stored["merged"] and adapter["disk_bytes"] == stored["adapter"] + base["disk_bytes"]
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 9 and {"prompt", "messages", "prediction", "gold", "scores"} <= set(json.loads(lines[0]))
    assert json.loads(lines[0])["messages"][-1]["role"] == "user"  # the turns the chat template rendered
    assert (out / "report.md").is_file() and (out / "report.png").is_file()


@pytest.mark.slow
def test_the_answer_budget_follows_the_task_and_few_items_are_flagged(tiny_run, tmp_path):
    out = tmp_path / "auto"
    result = run_kbit("eval", str(tiny_run), "--limit", "3", "--variant", "merged", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    generation = report["datasets"][0]["generation"]
    assert (generation["max_new_tokens"], generation["chosen_by"]) == (16, "training completions")  # arith answers are short
    assert report["settings"]["max_new_tokens"] == "per dataset"
    row = report["rows"][0]
    assert row["max_new_tokens"] == 16 and row["forward_tokens_per_s"] > 0 and row["tokens_per_s"] > 0
    assert row["exact_match_hits"] == round(3 * row["exact_match"]) and len(row["exact_match_ci95"]) == 2
    assert report["warnings"][0].startswith("arith: 3 held-out items: too few items to compare")
    assert "too few items to compare" in result.stdout
    assert f"{row['exact_match_hits']}/3 (" in (out / "report.md").read_text()


@pytest.mark.slow
def test_held_out_picks_the_split_of_another_dataset(tiny_run, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 2?", "answer": str(i + 2)}) + "\n" for i in range(20)))
    out = tmp_path / "held"
    result = run_kbit("eval", str(tiny_run), "--variant", "merged", "--dataset", str(data), "--held-out", "5",
                      "--max-new-tokens", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["rows"][0]["items"] == 5 and report["settings"]["held_out"] == 5
    assert report["datasets"][0]["generation"]["chosen_by"] == "--max-new-tokens"


@pytest.mark.slow
def test_a_run_trained_beside_a_held_out_file_is_scored_on_it_and_on_other_files(tiny, tmp_path):
    def write(name, numbers):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"question": f"What is {i} + 2?", "answer": str(i + 2)}) + "\n" for i in numbers))
        return path

    train, valid, other = write("train.jsonl", range(30)), write("valid.jsonl", [*range(50, 56), 3]), write("other.jsonl", range(25, 35))
    run = tmp_path / "run"
    result = run_kbit("train", "--model", str(tiny), "--dataset", str(train), "--held-out", "valid.jsonl", "--max-steps",
                      "1", "--batch-size", "2", "-o", "r=4", "--eval-limit", "0", "--output", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"1 of 7 held-out items of {valid} ask a prompt a training example of {train} asks too" in result.stderr
    record = json.loads((run / "kbit.json").read_text())
    assert record["config"]["held_out"] == str(valid)  # recorded whole, found again from any folder
    assert (record["dataset"]["train_examples"], record["dataset"]["held_out_examples"]) == (30, 7)
    assert record["dataset"]["held_out_trained_prompts"] == 1  # kept with the scores, and said again at the end
    assert "warning  1 of the 7 held-out items ask a prompt a training example asks too" in result.stdout
    card = (run / "README.md").read_text()
    assert "| held-out items | 7 of `valid` (a file of their own) |" in card

    own = run_kbit("eval", str(run), "--variant", "merged", "--max-new-tokens", "2", "--json")
    assert own.returncode == 0, own.stderr[-3000:]
    assert json.loads(own.stdout)["rows"][0]["items"] == 7 and json.loads(own.stdout)["rows"][0]["dataset"] == "valid"
    warned = " ".join(json.loads(own.stdout)["warnings"])  # in the report, not only on the console
    assert "1 of the 7 items of run model-train_" in warned and "own held-out split ask a prompt it trained on" in warned
    scored = run_kbit("eval", str(run), "--variant", "merged", "--held-out", str(other), "--max-new-tokens", "2", "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads(scored.stdout)["rows"][0]["items"] == 10
    assert f"5 of the 10 items scored from {other} ask a prompt run model-train_" in " ".join(json.loads(scored.stdout)["warnings"])
    assert "a training example of" not in scored.stderr  # said once, of the run's own training rows

    edited = valid.read_text().replace('"57"', '"58"')
    valid.write_text(edited)
    changed = run_kbit("eval", str(run), "--variant", "merged")
    assert changed.returncode == 2 and f"dataset {train} with the held-out file {valid} is not the data" in changed.stderr

    valid.rename(tmp_path / "moved.jsonl")
    moved = run_kbit("eval", str(run), "--variant", "merged")
    assert moved.returncode == 2 and f"held out the items of {valid}, which is no longer there" in moved.stderr


def test_a_test_file_is_scored_whole_against_a_model_outside_any_run(tiny, tmp_path, capsys, caplog):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": f"Say {'word ' * i}", "completion": "word " * i}) + "\n" for i in range(1, 8)))
    main(["eval", str(tiny), f"{tiny}/", "--held-out", str(test), "--out", str(tmp_path / "report"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert f"{tiny} is given 2 times; it is evaluated once" in caplog.text
    assert [(r["dataset"], r["items"]) for r in report["rows"]] == [("test", 7)]  # every row, none kept to train on
    assert report["rows"][0]["disk_bytes"] == sum(f.stat().st_size for f in tiny.glob("*.safetensors"))
    data = report["datasets"][0]
    assert (data["train_examples"], data["held_out_examples"], data["request"]["dataset"]) == (0, 7, None)
    generation = data["generation"]  # no training rows: the cap is measured on the file's own answers
    assert generation["chosen_by"] == "the held-out items' completions" and "of 7 completion lengths" in generation["detail"]
    assert report["warnings"][0].endswith("score a file of 30 items or more")
    assert len((tmp_path / "report" / "predictions.jsonl").read_text().splitlines()) == 7


def test_a_test_file_beside_a_dataset_counts_the_prompts_the_dataset_holds(tiny, tmp_path, capsys):
    rows, test = tmp_path / "rows.jsonl", tmp_path / "test.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(10)))
    test.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in (8, 9, 10, 11, 11)))
    main(["eval", str(tiny), "--dataset", str(rows), "--held-out", str(test), "--max-new-tokens", "2",
          "--out", str(tmp_path / "r"), "--json"])
    warnings = " ".join(json.loads(capsys.readouterr().out)["warnings"])
    assert f"2 of the 5 items of {test} ask a prompt a row of {rows} asks too" in warnings
    assert "1 of the 5 items of test ask the prompt of an earlier item" in warnings  # not five items' worth of evidence
    predictions = [json.loads(line) for line in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    assert [p["trained_prompt"] for p in predictions] == [True, True, False, False, False]  # to score without them


def test_a_chat_template_the_sandbox_stops_is_bad_input(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    attack = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # jinja2's sandbox refuses it; nothing runs
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if name.endswith(".jinja") and (model / name).is_file():
            (model / name).write_text(attack)
        elif name.endswith(".json"):
            config = json.loads((model / name).read_text())
            (model / name).write_text(json.dumps({**config, "chat_template": attack}))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n")
    result = run_kbit("eval", str(model), "--held-out", str(test), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("kbit: error: the model's chat template cannot be rendered (Security")


def test_an_item_longer_than_the_context_is_said_to_be_cut(tiny, tmp_path, capsys):
    test = tmp_path / "long.jsonl"
    test.write_text(json.dumps({"prompt": "Say a lot.", "completion": "word " * 3000}) + "\n"
                    + json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n")
    main(["eval", str(tiny), "--held-out", str(test), "--max-new-tokens", "2", "--out", str(tmp_path / "r"), "--json"])
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert (row["cut_to_context"], row["context"]) == (1, 512) and row["loss_tokens"] < 600
    assert f"{row['model']} base: 1 of the 2 items of long is longer than the model's context of 512 tokens" in " ".join(report["warnings"])


def test_a_test_file_that_cannot_be_scored_is_named(tiny, tmp_path, capsys):
    empty, other = tmp_path / "empty.jsonl", tmp_path / "other.jsonl"
    empty.write_text("")
    other.write_text(json.dumps({"text": "no answer here"}) + "\n")
    assert _fails(["eval", str(tiny), "--held-out", str(empty)], capsys) == f"kbit: error: held-out file {empty} is empty"
    assert f"held-out file {other} has no known format (columns: text)" in _fails(["eval", str(tiny), "--held-out", str(other)], capsys)
    assert f"held-out file {tiny} is a model folder, not data" in _fails(["eval", str(tiny), "--held-out", str(tiny)], capsys)


@pytest.mark.slow
def test_a_run_is_scored_on_every_item_of_a_test_file_beside_the_rows_it_trained_on(tiny_run, tmp_path):
    from kbit.core.data import load_task_data

    trained = load_task_data("arith", max_examples=40).train[0]  # what tiny_run trained on
    test = tmp_path / "test.jsonl"
    rows = [{"prompt": trained.prompt[-1][1], "completion": trained.completion}] + [
        {"prompt": f"What is {i} plus 1000?", "completion": str(i + 1000)} for i in range(4)]
    test.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_kbit("eval", str(tiny_run), "--variant", "merged", "--held-out", str(test), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [(r["dataset"], r["items"]) for r in report["rows"]] == [("test", 5)]
    data = report["datasets"][0]  # the rows the run trained on set the answer length, as for its own split
    assert data["generation"]["chosen_by"] == "training completions" and data["train_examples"] == 40
    assert f"1 of the 5 items scored from {test} ask a prompt run " in " ".join(report["warnings"])


@pytest.mark.slow
def test_reruns_are_identical(tiny_run, tmp_path, capsys):
    outputs = []
    for name in ("one", "two"):
        main(["eval", str(tiny_run), "--variant", "merged", "--limit", "4", "--max-new-tokens", "4", "--out", str(tmp_path / name), "--json"])
        outputs.append(json.loads(capsys.readouterr().out))
    keep = ("loss", "perplexity", "exact_match", "memory_bytes", "bits_per_weight")
    assert [{k: r[k] for k in keep} for r in outputs[0]["rows"]] == [{k: r[k] for k in keep} for r in outputs[1]["rows"]]
    assert (tmp_path / "one" / "predictions.jsonl").read_text() == (tmp_path / "two" / "predictions.jsonl").read_text()


def _fails(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kbit: error: ") and "\n" not in err, err
    return err


def _copy_meta(tiny_run, tmp_path, **changes):
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "adapter", run / "adapter")
    data = {**json.loads((tiny_run / "kbit.json").read_text()), **changes}
    (run / "kbit.json").write_text(json.dumps(data))
    return run


def test_a_model_folder_without_its_tokenizer_says_so(tiny, tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny / name, folder / name)
    assert f"{folder} has no tokenizer files; copy the base model's tokenizer.json" in _fails(["eval", str(folder)], capsys)


def test_a_path_that_is_no_model_or_run(tmp_path, capsys):
    assert "does not exist" in _fails(["eval", str(tmp_path / "missing")], capsys)
    assert "neither a kbit run" in _fails(["eval", str(tmp_path)], capsys)


@pytest.mark.slow
def test_corrupt_and_newer_metadata(tiny_run, tmp_path, capsys):
    run = tmp_path / "corrupt"
    run.mkdir()
    (run / "kbit.json").write_text("{not json")
    assert "is corrupt" in _fails(["eval", str(run)], capsys)
    newer = _copy_meta(tiny_run, tmp_path, schema_version=99)
    assert "schema version 99" in _fails(["eval", str(newer)], capsys)
    shutil.rmtree(newer)
    outside = _copy_meta(tiny_run, tmp_path, artifacts={"adapter": "adapter", "merged": str(tiny_run / "merged")})
    assert "artifacts.merged (" in _fails(["eval", str(outside), "--variant", "merged"], capsys)  # never another run's


@pytest.mark.slow
def test_a_run_whose_dataset_changed_is_not_scored_on_it(tiny_run, tmp_path, capsys):
    recorded = json.loads((tiny_run / "kbit.json").read_text())
    run = _copy_meta(tiny_run, tmp_path, dataset={**recorded["dataset"], "fingerprint": "0123456789abcdef"})
    error = _fails(["eval", str(run), "--variant", "adapter", "--limit", "2"], capsys)
    assert "is not the data run" in error and "the run recorded 0123456789abcdef" in error and "--dataset FILE" in error


@pytest.mark.slow
def test_a_run_of_a_method_no_longer_installed_names_its_plugin_and_scores_the_rest(tiny_run, tmp_path, capsys):
    run = _copy_meta(tiny_run, tmp_path, method="gone-int4", method_plugin={"distribution": "kbit-gone", "version": "0.3"})
    shutil.copytree(tiny_run / "merged", run / "merged")
    error = _fails(["eval", str(run), "--variant", "adapter", "--limit", "2"], capsys)
    assert "trained its adapter with method 'gone-int4' of kbit-gone 0.3, which is not installed here; pip install " \
           "'kbit-gone==0.3'" in error
    main(["eval", str(run), "--limit", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "report"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in report["rows"]] == ["base", "merged"]
    assert [g["variant"] for g in report["gaps"]] == ["adapter"] and "pip install 'kbit-gone==0.3'" in report["gaps"][0]["reason"]


@pytest.mark.slow
def test_a_run_whose_dataset_file_moved_says_where_to_put_it_back(tiny_run, tmp_path, capsys):
    recorded = json.loads((tiny_run / "kbit.json").read_text())
    gone = tmp_path / "moved-away" / "data.jsonl"
    run = _copy_meta(tiny_run, tmp_path, config={**recorded["config"], "dataset": str(gone)})
    shutil.copytree(tiny_run / "merged", run / "merged")
    error = _fails(["eval", str(run), "--variant", "adapter", "--limit", "2"], capsys)
    assert f"trained on {gone}, which is no longer there (moved or deleted); put the file back at that path" in error
    assert "--dataset FILE" in error
    assert f"trained on {gone}, which is no longer there" in _fails(["export", str(run)], capsys)
    assert f"trained on {gone}, which is no longer there" in _fails(["train", "--resume", str(run)], capsys)


@pytest.mark.slow
def test_method_without_an_installed_plugin(tiny_run, tmp_path, capsys):
    run = _copy_meta(tiny_run, tmp_path, method="gptq-nope")
    assert "unknown method 'gptq-nope'" in _fails(["eval", str(run), "--variant", "adapter"], capsys)
    assert "unknown method" in _fails(["eval", str(tiny_run), "--variant", "base", "--method", "nope"], capsys)


@pytest.mark.slow
def test_dataset_that_does_not_fit(tiny_run, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"foo": i, "bar": i}) + "\n" for i in range(5)))
    assert "no known format" in _fails(["eval", str(tiny_run), "--variant", "merged", "--dataset", str(data)], capsys)
    assert "no column(s) nope" in _fails(["eval", str(tiny_run), "--variant", "merged", "--dataset", str(data),
                                          "--columns", "prompt=foo,completion=nope"], capsys)


@pytest.mark.slow
def test_bad_options(tiny_run, capsys):
    assert "unknown --variant 'lora'" in _fails(["eval", str(tiny_run), "--variant", "lora"], capsys)
    assert "'limit'" in _fails(["eval", str(tiny_run), "--limit", "0"], capsys)


def test_bad_input_through_the_installed_cli(tmp_path):
    result = run_kbit("eval", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_a_file_that_is_not_a_model_is_named_as_such(tmp_path, capsys):
    data = tmp_path / "x.json"
    data.write_text("{}")
    assert f"{data} is a file, not a kbit run, a model directory or a .gguf file" in _fails(["eval", str(data)], capsys)


@pytest.mark.slow
def test_default_model_base_and_its_qlora_quantization(tmp_path):
    out = tmp_path / "report"
    result = run_kbit("eval", "--model", "default", "--method", "qlora", "--limit", "5", "--max-new-tokens", "8",
                      "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)["rows"]
    assert [r["variant"] for r in rows] == ["base", "base+qlora"]
    base, quantized = rows
    assert base["model"] == "SmolLM2-135M-Instruct" and base["bits_per_weight"] == 32
    assert 4.1 < quantized["bits_per_weight"] < 4.35 and quantized["memory_bytes"] < base["memory_bytes"] / 2
    assert all(r["items"] == 5 and 0 < r["loss"] < 20 for r in rows)


@pytest.mark.slow
def test_a_run_scored_on_its_own_file_under_another_split_counts_the_items_it_trained_on(tiny, tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "completion": str(2 * i)}) + "\n" for i in range(40)))
    run = tmp_path / "run"
    trained = run_kbit("train", "--model", str(tiny), "--dataset", str(data), "--held-out", "4", "--max-steps", "1",
                       "--batch-size", "2", "-o", "r=4", "--eval-limit", "0", "--output", str(run))
    assert trained.returncode == 0, trained.stderr[-3000:]
    scored = run_kbit("eval", str(run), "--dataset", str(data), "--held-out", "20", "--limit", "20",
                      "--max-new-tokens", "3", "--variant", "merged", "--out", str(tmp_path / "report"))
    assert scored.returncode == 0, scored.stderr[-3000:]
    # 36 of the 40 rows trained: of 20 held out under the other split, all but those among the run's 4 did
    warning = next(line for line in scored.stdout.splitlines() if "ask a prompt run" in line)
    assert warning.split("warning ")[-1] in json.loads((tmp_path / "report" / "report.json").read_text())["warnings"]
    shared = int(warning.split("warning")[-1].split()[0])
    assert 16 <= shared <= 20 and "of the 20 items scored from" in warning and "trained on" in warning
    own = run_kbit("eval", str(run), "--max-new-tokens", "3", "--variant", "merged", "--out", str(tmp_path / "own"))
    assert own.returncode == 0 and "ask a prompt run" not in own.stdout
    # the run's own split holds 4: --limit cannot add any, its training can
    assert "the run holds out 4: train it with --held-out 30 or more" in own.stdout and "--limit" not in own.stdout
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "completion": str(2 * i)}) + "\n" for i in range(38, 42)))
    filed = run_kbit("eval", str(run), "--held-out", str(test), "--max-new-tokens", "3", "--variant", "merged", "--json")
    assert filed.returncode == 0, filed.stderr[-3000:]
    data = json.loads(filed.stdout)["datasets"][0]  # beside the 36 rows the run trained on, not the file's 40
    assert (data["train_examples"], data["held_out_examples"]) == (36, 4) and data["held_out_trained_prompts"] <= 2


@pytest.mark.parametrize("label, start", [("日本語モデル-q8_0", "日本語モデル-q8_0-"), ("-x y", "x-y-"), ("…", "model-")])
def test_a_report_folder_keeps_the_models_letters_and_never_starts_with_a_dash(label, start):
    from types import SimpleNamespace

    from kbit.core.evaluate.pipeline import default_out_dir

    folder = default_out_dir([SimpleNamespace(label=label)])
    assert folder.parent.name == "reports" and folder.name.startswith(start)
