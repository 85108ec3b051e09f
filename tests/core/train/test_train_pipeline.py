"""End-to-end training on a tiny random model through the real CLI and the method hooks."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from kbit.core.runs.record import read_metadata
from kbit.core.runs.record import read_record
from tests.conftest import run_kbit

from tests.core.train.conftest import TRAIN


@pytest.mark.slow
def test_run_directory_has_every_output(qlora_run):
    out, result = qlora_run
    for name in ("adapter", "merged", "kbit.json", "README.md", "loss.png"):
        assert (out / name).exists(), name
    assert not (out / ".kbit.lock").exists()
    assert "held-out exact match" in result.stdout and str(out) in result.stdout


THIRD_PARTY_NOISE = ("Failed to load", "register_constant", "gemm_4bit_forward", "it/s]", "{'loss'", "[transformers")


@pytest.mark.slow
def test_console_shows_kbit_lines_only_and_the_run_log_keeps_the_third_party_ones(qlora_run):
    out, result = qlora_run
    for noise in THIRD_PARTY_NOISE:
        assert noise not in result.stderr and noise not in result.stdout, noise
    assert "step 3/3  loss" in result.stderr and "scoring 4 held-out items" in result.stderr
    log = (out / "train.log").read_text()
    # Which libraries warn depends on the machine (bitsandbytes when its CPU library does not load here);
    # torchao warns about its CUDA kernels on every CPU machine where kbit[torchao] is installed.
    if importlib.util.find_spec("torchao"):
        assert "WARNING torchao: Failed to load" in log
    assert "INFO kbit: step 3/3  loss" in log and read_record(out).artifacts["log"] == "train.log"
    # what the loss is taken on: the answer and the end of the turn, not the question (run log and -v only)
    shown = log.split("the first training row as the model reads it")[1].split(" INFO ")[0]
    assert re.search(r"\?<\|im_end\|>\n<\|im_start\|>assistant\n⟦-?\d+<\|im_end\|>", shown), shown
    assert "the first training row" not in result.stderr


@pytest.mark.slow
def test_held_out_loss_is_shown_and_reported_to_tensorboard(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "4", "--batch-size", "2",
                      "-o", "r=4", "--max-examples", "40", "--eval-limit", "4", "--logging-steps", "2",
                      "--report-to", "tensorboard")
    assert result.returncode == 0, result.stderr[-3000:]
    history = read_metadata(out)["loss_history"]
    assert [(h["step"], "eval_loss" in h) for h in history] == [(1, False), (2, True), (4, True)]
    assert "step 4/4  held-out loss" in result.stderr
    assert f"held-out loss {history[1]['eval_loss']:.3f} → {history[2]['eval_loss']:.3f}" in result.stdout
    assert list((out / "checkpoints" / "runs").glob("*/events.out.tfevents.*"))


@pytest.mark.slow
def test_answers_of_megabytes_train_and_score_on_what_training_reads(tiny, tmp_path):
    data = tmp_path / "long.jsonl"
    with data.open("w") as file:
        for i in range(24):
            file.write(json.dumps({"prompt": f"q{i}", "completion": "z" * (2_000_000 if i % 4 == 0 else 20_000)}) + "\n")
    out = tmp_path / "run"
    started = time.monotonic()
    result = run_kbit("train", "--model", str(tiny), "--dataset", str(data), "--output", str(out), "--max-steps", "1",
                      "--batch-size", "2", "-o", "r=4", "--held-out", "4", "--eval-limit", "4")
    # Before, the held-out texts went uncut into the merge check (a 40 GB logits tensor) and trl tokenized each
    # 2 MB answer whole.
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 180
    record = read_metadata(out)
    assert record["merge"]["top1_agreement"] == 1.0 and record["metrics"]["after"]["items"] == 4


@pytest.mark.slow
def test_a_run_of_epochs_measures_its_last_steps_held_out_loss_once(tiny, tmp_path):
    out = tmp_path / "epochs"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "0", "--epochs", "0.25",
                      "--batch-size", "2", "-o", "r=4", "--max-examples", "40", "--eval-limit", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)  # --json: stdout holds the record alone, for a script
    assert printed["run"] == str(out.resolve()) and printed["status"] == "finished"
    assert printed["train"] == read_metadata(out)["train"]
    steps = read_metadata(out)["train"]["steps"]
    assert result.stderr.count(f"step {steps}/{steps}  held-out loss") == 1
    assert [h["step"] for h in read_metadata(out)["loss_history"] if "eval_loss" in h] == [steps]


@pytest.mark.slow
def test_measuring_the_held_out_loss_does_not_change_what_is_trained(tiny, tmp_path):
    """The same seed trains the same adapter whether the held-out loss is measured every step or never
    (an evaluation's DataLoader used to take a seed from the generator the dropout masks draw from)."""
    losses = []
    for every in ("1", "0"):
        out = tmp_path / f"eval-{every}"
        result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "4", "--batch-size", "2",
                          "-o", "r=4", "-o", "lora_dropout=0.3", "--max-examples", "40", "--eval-limit", "4",
                          "--logging-steps", "1", "--eval-steps", every, "-o", "merge_after_train=false")
        assert result.returncode == 0, result.stderr[-3000:]
        losses.append([h["loss"] for h in read_metadata(out)["loss_history"]])
    assert len(losses[0]) == 4 and losses[0] == losses[1]


@pytest.mark.slow
def test_quiet_prints_only_results_and_verbose_everything(tiny, tmp_path):
    quiet = run_kbit("train", "-q", "--model", str(tiny), "--output", str(tmp_path / "quiet"), *TRAIN)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == "" and quiet.stdout.startswith("run ") and "held-out exact match" in quiet.stdout
    assert "step 3/3  loss" in (tmp_path / "quiet" / "train.log").read_text()
    verbose = run_kbit("-v", "train", "--model", str(tiny), "--output", str(tmp_path / "verbose"), *TRAIN,
                       "--eval-limit", "0")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Loading weights" in verbose.stderr  # transformers' own progress bar
    if importlib.util.find_spec("torchao"):  # a third-party warning (see the test above)
        assert "warning  [torchao] Failed to load" in verbose.stderr
    assert "{'loss'" in verbose.stdout  # the Trainer's own log lines


@pytest.mark.slow
def test_metadata_is_complete_and_round_trips_into_a_spec(qlora_run):
    out, _ = qlora_run
    record = read_metadata(out)
    assert record["status"] == "finished" and record["error"] is None
    spec = read_record(out).spec
    assert spec.method == "qlora" and spec.adapter.r == 4
    assert [h["step"] for h in record["loss_history"]] == [1, 2, 3]
    # the held-out loss beside the training loss (3 steps, logging every step: measured every step)
    assert all(h["eval_loss"] > 0 for h in record["loss_history"]) and record["train"]["held_out_loss_items"] == 4
    for key in ("base_model", "dataset", "versions", "merge_policy", "wall_time_s", "peak_memory_bytes", "config"):
        assert record[key], key
    assert record["dataset"]["fingerprint"] and record["base_model"]["revision"]
    assert record["versions"]["transformers"] and record["versions"]["python"]
    assert len(record["versions"]["kbit-source"]) == 16  # two checkouts of one version told apart
    generation = record["metrics"]["generation"]
    assert (generation["max_new_tokens"], generation["chosen_by"]) == (5, "--max-new-tokens")
    assert generation["stop_tokens"] == ["<|im_end|>"]
    after = record["metrics"]["after"]
    assert after["items"] == 4 and after["exact_match_hits"] == round(4 * after["exact_match"])
    assert len(after["exact_match_ci95"]) == 2 and record["metrics"]["too_few_items"] is True


@pytest.mark.slow
def test_adapter_reloads_and_merged_model_matches_it(qlora_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kbit.core.model.merge import computing_in
    from kbit.core.methods.registry import get_method

    out, _ = qlora_run
    record = read_metadata(out)
    assert record["merge"]["max_abs_logit_diff"] < 1e-2
    assert record["merge"]["top1_agreement"] == 1.0
    spec = read_record(out).spec
    method = get_method(record["method"])
    base = AutoModelForCausalLM.from_pretrained(record["base_model"]["path"], quantization_config=method.build_quant_config(spec),
                                                # as kbit loads the base it trains on: unquantized weights in the compute dtype
                                                dtype=getattr(torch, spec.training.compute_dtype))
    adapter_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    ids = torch.tensor([[5, 20, 30, 40, 50, 60, 70]])
    # Computed as the merged model computes (the 4-bit layers' compute dtype is bf16 where training ran in bf16),
    # as kbit's own merge check does.
    with torch.no_grad(), computing_in(adapter_model, spec.training.merge_dtype):
        diff = (adapter_model(input_ids=ids).logits - merged(input_ids=ids).logits.float()).abs().max().item()
    # A merged model stored in bf16 carries bf16's rounding of every weight on top of the merge itself.
    assert diff < (1e-2 if spec.training.merge_dtype == "float32" else 3e-2)
    assert not any("lora" in name for name, _ in merged.named_parameters())


@pytest.mark.slow
def test_adapter_is_trained_in_the_compute_dtype(qlora_run):
    from safetensors.torch import load_file

    from kbit.core.system.device import detect_device, resolve_compute_dtype

    out, _ = qlora_run
    record = read_record(out)
    expected = resolve_compute_dtype("auto", detect_device())  # auto on this CPU-only machine
    assert record.spec.training.compute_dtype == expected
    decision = record.decisions["compute_dtype"]
    assert (decision["value"], decision["requested"]) == (expected, "auto")
    assert "native bf16" in decision["reason"] and "/proc/cpuinfo" in decision["reason"]
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    # trl casts a quantized base's adapter to bf16; kbit keeps PEFT's float32 (see kbit.core.train.trainer).
    assert {str(t.dtype) for t in adapter.values()} == {"torch.float32"}


@pytest.mark.slow
def test_batch_layout_decision_and_token_counts_are_recorded(qlora_run):
    record = read_record(qlora_run[0])
    decision = record.decisions["padding_free"]
    assert decision["requested"] == "auto" and isinstance(decision["value"], bool) and decision["reason"]
    real, in_batches = record.train.tokens_real, record.train.tokens_in_batches
    assert 0 < real <= in_batches
    assert (real == in_batches) is decision["value"]  # padding-free batches carry no padding; padded ones some


@pytest.mark.slow
def test_training_speed_and_mfu_are_recorded_and_printed(qlora_run):
    out, result = qlora_run
    train = read_record(out).train
    assert 0 < train.step_seconds and train.tokens_per_s == pytest.approx(train.tokens_real / train.step_seconds, rel=0.02)
    assert train.achieved_gflops > 0 and train.peak_gflops > 0
    assert train.mfu == pytest.approx(train.achieved_gflops / train.peak_gflops, abs=0.002)
    assert train.flop_per_token > 0 and "matmul on cpu" in train.peak
    speed = next(line for line in result.stdout.splitlines() if line.startswith("speed"))
    assert f"{train.tokens_per_s:.0f} tokens/s" in speed and f"{100 * train.mfu:.0f}% of the measured peak" in speed


@pytest.mark.slow
def test_without_lr_a_method_with_no_default_of_its_own_trains_at_kbits(qlora_run):
    from kbit.core.train.config import DEFAULT_LR

    record = read_record(qlora_run[0])
    assert record.spec.training.learning_rate is None
    assert record.config.lr == DEFAULT_LR and record.decisions["lr"] == {"value": DEFAULT_LR, "requested": None,
                                                                              "reason": "kbit's default"}


@pytest.mark.slow
def test_the_command_trained_under_kbits_malloc_settings(qlora_run):
    from kbit.core.system.allocator import TUNABLES, tuned_environment

    decision = read_record(qlora_run[0]).decisions["malloc"]
    if tuned_environment({}) is None:  # not glibc >= 2.26: nothing to set
        assert decision["value"] == "default"
    else:
        assert (decision["value"], decision["requested"]) == (":".join(TUNABLES), "auto")


@pytest.mark.slow
def test_checkpointing_decision_is_recorded_with_its_memory_estimates(qlora_run):
    record = read_record(qlora_run[0])
    decision = record.decisions["gradient_checkpointing"]
    # The tiny model's step needs a few MiB: auto leaves checkpointing off, whatever the device.
    assert (decision["value"], decision["requested"]) == (False, "auto")
    assert record.spec.training.gradient_checkpointing is False
    assert 0 < decision["estimated_bytes_with"] < decision["estimated_bytes_without"] < decision["free_bytes"]
    assert "MiB free" in decision["reason"]


@pytest.mark.slow
def test_model_card_has_front_matter(qlora_run):
    card = (qlora_run[0] / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    assert "library_name: peft" in card and "- qlora" in card


@pytest.mark.slow
def test_third_party_method_trains_through_the_hooks(plugin_site, tiny, tmp_path):
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"}, modules=("kbit_toy",))
    out = tmp_path / "toy"
    result = run_kbit("train", "--method", "toy", "--model", str(tiny), "--output", str(out), *TRAIN,
                      env=plugin_site.env())
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "kbit.json").read_text())
    assert record["method"] == "toy" and record["merge"]["base"] == "original"


@pytest.mark.slow
def test_yaml_config_with_flags_winning(tiny, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny}\nmax_steps: 1\nbatch_size: 2\nmax_examples: 20\neval_limit: 0\nlr: 0.001\n"
                      "options:\n  r: 2\n  merge_after_train: false\n")
    out = tmp_path / "yaml-run"
    result = run_kbit("train", "--config", str(config), "-o", "r=3", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_metadata(out)
    assert record["spec"]["adapter"]["r"] == 3
    assert record["config"]["max_steps"] == 1
    assert record["config"]["lr"] == 0.001 and record["decisions"]["lr"]["reason"].startswith("given")
    assert record["merge"]["action"] == "keep_adapter" and not (out / "merged").exists()


@pytest.mark.slow
def test_auto_rank_and_batch_are_chosen_and_recorded(tiny, tmp_path):
    out = tmp_path / "auto"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "1",
                      "-o", "r=auto", "--batch-size", "auto", "--max-examples", "20", "--eval-limit", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_metadata(out)
    assert record["spec"]["adapter"]["r"] == 8  # hidden 64 → floor of the [8, 64] range
    assert record["train"]["batch_size"] == 16 and "batch=16" in record["sizing"]["batch_size"]
    assert "auto sizing" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--model", "/nonexistent/model"), "does not exist"),
    (("--dataset", "no_such_local_dataset_xyz"), "cannot load dataset"),
    (("--dataset", "{jsonl}", "--columns", "prompt=q,completion=missing"), "no column(s) missing"),
    (("--dataset", "{empty}"), "is empty"),
    (("--max-length", "10"), "max length 10 is too short"),
    (("--max-length", "4096"), "--max-length 4096 is longer than the model's context of 512 tokens; pass at most 512"),
    (("--dataset", "{long}", "--max-length", "512"), "the model reads at most 512 tokens, so shorten or remove those rows"),
    (("-o", "bogus=1"), "unknown option 'bogus'"),
    (("--output", "{nonempty}"), "already holds other data, not written by this command"),
    (("--method", "qlroa"), "did you mean qlora"),
    (("--lr", "-1"), "'lr'"),
    (("--model", "{gpt2}", "--method", "qat"), "deploys its run as a q4_0 GGUF file: kbit exports GGUF for gemma2, "
                                               "gemma3_text, llama, mistral, phi3, qwen2, qwen3 models, not 'gpt2'"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny, kbit_tiny_model_factory, tmp_path, monkeypatch, capsys,
                                                            args, message):
    """In-process, as tests/reliability/test_bad_input.py runs its table (a subprocess per case would
    spend most of its time importing the libraries)."""
    from kbit.core.cli import main

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"q": "1+1", "a": "2"}\n{"q": "2+2", "a": "4"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    nonempty = tmp_path / "taken"
    nonempty.mkdir()
    (nonempty / "file.txt").write_text("mine")
    long = tmp_path / "long.jsonl"  # a prompt the tiny model's 512 positions cannot hold, whatever --max-length
    long.write_text("".join(json.dumps({"prompt": ("word " * 200 if i == 0 else "q"), "completion": "a"}) + "\n"
                            for i in range(8)))
    paths = {"jsonl": jsonl, "empty": empty, "nonempty": nonempty, "long": long}
    if "{gpt2}" in args:
        paths["gpt2"] = kbit_tiny_model_factory(model_type="gpt2")
    args = [a.format(**paths) for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", str(tiny), "--max-steps", "1", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("kbit: error:")]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in nonempty.iterdir()] == ["file.txt"]


@pytest.mark.slow
def test_two_processes_under_torchrun_train_the_same_adapter(tiny, tmp_path):
    out = tmp_path / "ddp"
    torchrun = shutil.which("torchrun") or pytest.skip("torchrun not installed")
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "kbit", "train", "--model", str(tiny),
         "--output", str(out), *TRAIN],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_metadata(out)
    digests = record["train"]["rank_adapter_digests"]
    assert record["train"]["world_size"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert result.stdout.count("held-out exact match") == 1  # only rank 0 reports and writes
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "adapter", "checkpoints", "kbit.json", "loss.png", "merged", "train.log"])


@pytest.mark.slow
def test_a_two_process_run_resumes_under_torchrun_as_it_would_have_ended_and_not_in_one_process(tiny, tmp_path):
    from safetensors.torch import load_file

    torchrun = shutil.which("torchrun") or pytest.skip("torchrun not installed")
    args = ("--model", str(tiny), "--max-steps", "4", "--save-steps", "2", "--batch-size", "4", "-o", "r=4",
            "--max-examples", "40", "--eval-limit", "0", "-o", "merge_after_train=false", "--seed", "3")

    def under_torchrun(*kbit_args: str) -> subprocess.CompletedProcess:
        return subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "kbit", "train", *kbit_args],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    full, part = tmp_path / "full", tmp_path / "part"
    assert under_torchrun(*args, "--output", str(full)).returncode == 0
    # what a kill after checkpoint-2 leaves behind
    shutil.copytree(full, part)
    shutil.rmtree(part / "adapter")
    shutil.rmtree(part / "checkpoints" / "checkpoint-4")
    record = read_metadata(part)
    record.update(status="running", artifacts={})
    (part / "kbit.json").write_text(json.dumps(record))
    single = run_kbit("train", "--resume", str(part))
    assert single.returncode == 2 and "it trained in 2" in single.stderr and "--nproc_per_node 2" in single.stderr
    # transformers maps the optimizer state to cpu:0 under torchrun, which torch.load did not restore
    resumed = under_torchrun("--resume", str(part))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metadata(part)["train"]["resumed_from"] == "checkpoint-2"
    got, want = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (part, full))
    assert all((got[k] == want[k]).all() for k in want)


@pytest.mark.slow
def test_nan_loss_stops_the_run_marks_it_failed_and_keeps_the_checkpoint(plugin_site, tiny, tmp_path):
    plugin_site.add("kbit-nan", "1.0", {"toy": "kbit_nan"}, modules=("kbit_nan", "kbit_toy"))
    out = tmp_path / "nan"
    result = run_kbit("train", "--method", "toy", "--model", str(tiny), "--output", str(out), "--max-steps", "6",
                      "--batch-size", "2", "-o", "r=4", "--max-examples", "40", "--eval-limit", "0",
                      "--logging-steps", "1", "--save-steps", "1", env=plugin_site.env())
    assert result.returncode == 2, result.stderr[-2000:]
    # the progress bar leaves a partial line on stderr, so the message may follow it on the same line
    error = [line[line.index("kbit: error:"):] for line in result.stderr.splitlines() if "kbit: error:" in line]
    assert len(error) == 1 and "training loss became nan" in error[0]
    record = read_metadata(out)
    assert record["status"] == "failed" and "training loss became nan" in record["error"]
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"], "the good checkpoints stay, no poisoned one is saved"
    assert not (out / "adapter").exists() and not (out / ".kbit.lock").exists()


@pytest.mark.slow
def test_last_step_loss_is_logged_and_few_held_out_items_are_flagged(tiny, tmp_path):
    """DoRA, 3 steps, logging every 10: the summary's last loss is step 3's, not a repeat of step 1's."""
    out = tmp_path / "dora"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--peft", "dora", "--max-steps", "3",
                      "--batch-size", "2", "-o", "r=4", "--max-examples", "40", "--held-out", "6", "--eval-limit", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_metadata(out)
    history = record["loss_history"]
    assert [h["step"] for h in history] == [1, 3] and record["config"]["logging_steps"] == 10
    assert f"loss     {history[0]['loss']:.3f} → {history[-1]['loss']:.3f} over 3 steps" in result.stdout
    assert record["config"]["held_out"] == 6 and record["dataset"]["held_out_examples"] == 6
    metrics = record["metrics"]
    assert metrics["generation"]["chosen_by"] == "training completions" and metrics["generation"]["max_new_tokens"] == 16
    hits = (metrics["before"]["exact_match_hits"], metrics["after"]["exact_match_hits"])
    assert f"held-out exact match {hits[0]}/4 → {hits[1]}/4 (" in result.stdout
    assert "4 held-out items: too few items to compare" in result.stdout and "raise --eval-limit to 30" in result.stdout
    assert "at most 16 new tokens (training completions: 95th percentile of 40 completion lengths" in result.stdout


@pytest.mark.slow
def test_kbit_eval_reproduces_the_runs_own_adapter_figure(tiny, tmp_path):
    out = tmp_path / "run"
    # bf16: peft's k-bit preparation upcasts the trained model's norms to float32, the adapter as loaded keeps them
    trained = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "3", "--max-examples", "60",
                       "--eval-limit", "20", "-o", "compute_dtype=bfloat16")
    assert trained.returncode == 0, trained.stderr[-3000:]
    after = read_metadata(out)["metrics"]["after"]
    report = tmp_path / "report"
    evaluated = run_kbit("eval", str(out), "--variant", "adapter", "--limit", "20", "--out", str(report), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (row,) = json.loads(evaluated.stdout)["rows"]
    assert row["exact_match"] == after["exact_match"] and row["answers_cut"] == after["answers_cut"]
    predictions = [json.loads(line)["prediction"] for line in (report / "predictions.jsonl").read_text().splitlines()]
    assert predictions[:5] == [sample["prediction"] for sample in after["samples"]]  # the same answers, not only a count


@pytest.mark.slow
def test_the_optimizer_weight_decay_and_gradient_clipping_are_the_ones_asked_for(tiny, tmp_path):
    import torch

    out = tmp_path / "optim"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--max-steps", "2", "--batch-size", "2",
                      "-o", "r=4", "--max-examples", "20", "--eval-limit", "0", "--optim", "paged_adamw_8bit",
                      "--weight-decay", "0.01", "--max-grad-norm", "0.3")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = out / "checkpoints" / "checkpoint-2"
    args = torch.load(checkpoint / "training_args.bin", weights_only=False)  # written by this test's own run
    assert (args.optim, args.weight_decay, args.max_grad_norm) == ("paged_adamw_8bit", 0.01, 0.3)
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert state["param_groups"][0]["weight_decay"] == 0.01 and "t_alpha" in state["param_groups"][0]  # bitsandbytes' AdamW
    assert read_record(out).config.optim == "paged_adamw_8bit"


@pytest.mark.slow
def test_turns_all_trains_every_assistant_answer_of_a_conversation(tiny, tmp_path):
    def turn(role, text):
        return {"role": role, "content": text}

    rows = [{"messages": [turn("user", f"{i} + 1?"), turn("assistant", str(i + 1)), turn("user", "and + 1?"),
                          turn("assistant", str(i + 2))]} for i in range(24)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "turns"
    result = run_kbit("train", "--model", str(tiny), "--dataset", str(data), "--held-out", "4", "--turns", "all",
                      "--max-steps", "1", "--batch-size", "2", "-o", "r=4", "--eval-limit", "4", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--turns all: 20 conversations give 40 training examples, one per assistant answer" in result.stderr
    assert "preparing 40 training examples" in result.stderr
    record = read_record(out)
    assert record.config.turns == "all" and record.dataset.train_examples == 20  # the split is of conversations
