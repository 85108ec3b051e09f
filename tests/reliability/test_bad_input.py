"""The bad-input table: each case exits 2 with one line naming the problem, no traceback, no output."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

from kbit.core.cli import main
from kbit.core.methods import registry as registry_module
from kbit.core.methods.registry import Registry
from tests.reliability.refusals import assert_refused, run_in_process


def _with_record(root: Path, run: Path, name: str, change) -> Path:
    """A copy of ``run`` whose kbit.json ``change(record)`` edited."""
    copy = root / name
    shutil.copytree(run, copy)
    record = json.loads((copy / "kbit.json").read_text())
    change(record)
    (copy / "kbit.json").write_text(json.dumps(record))
    return copy


def _files(root: Path, tiny: Path, run: Path) -> dict[str, Path]:
    """Every broken input the table refers to, written into ``root``."""
    def write(name: str, text: str) -> Path:
        (root / name).write_text(text)
        return root / name

    files = {
        "tiny": tiny,
        "yaml_bad": write("bad.yaml", "max_steps: [1,\n"),
        "yaml_unknown": write("unknown.yaml", "max_step: 3\n"),
        "yaml_list": write("list.yaml", "- a\n- b\n"),
        "yaml_options": write("options.yaml", "options: 5\n"),
        "yaml_value": write("value.yaml", "lr: fast\n"),
        "yaml_name": write("name.yaml", "name: ../../escape\n"),
        "jsonl_bad": write("bad.jsonl", '{"question": "a", "answer": "1"}\n{"question": "b", "answer": "2"}\n{"question": oops}\n'),
        "jsonl_list": write("list.jsonl", '{"question": "a", "answer": "1"}\n[1, 2]\n'),
        "jsonl_cols": write("cols.jsonl", '{"q": "a", "a": "1"}\n{"q": "b", "a": "2"}\n'),
        "jsonl_empty": write("empty.jsonl", "\n"),
        "csv_header_only": write("header.csv", "prompt,completion\r\n"),
        "json_bad": write("bad.json", "{not json"),
        "chat_bad": write("chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n' * 3),
        "kbitjson_corrupt": root / "corrupt-run",
        "kbitjson_newer": root / "newer-run",
        "not_run": root / "not-a-run",
        "no_config": root / "no-config",
        "truncated": root / "truncated",
        "pickled": root / "pickled",
        "vit": root / "vit",
        "gguf_bad": write("broken.gguf", "GGUF? no" * 64),
        "taken": root / "taken",
    }
    files["kbitjson_corrupt"].mkdir()
    (files["kbitjson_corrupt"] / "kbit.json").write_text('{"schema_version": 1, "spec": ')
    files["kbitjson_newer"].mkdir()
    (files["kbitjson_newer"] / "kbit.json").write_text(json.dumps({"schema_version": 99}))
    files["not_run"].mkdir()
    files["no_config"].mkdir()
    (files["no_config"] / "model.safetensors").write_bytes(b"")
    shutil.copytree(tiny, files["truncated"])
    weights = files["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    files["pickled"].mkdir()
    shutil.copy(tiny / "config.json", files["pickled"])
    (files["pickled"] / "pytorch_model.bin").write_bytes(b"pickle")
    shutil.copytree(tiny, files["vit"])
    config = json.loads((files["vit"] / "config.json").read_text())
    (files["vit"] / "config.json").write_text(json.dumps({**config, "model_type": "vit", "architectures": ["ViTModel"]}))
    files["taken"].mkdir()
    (files["taken"] / "notes.txt").write_text("someone else's")
    files.update(_more_files(root, tiny, run, write))
    return files


def _more_files(root: Path, tiny: Path, run: Path, write) -> dict[str, Path]:
    rows = lambda answer: "".join(json.dumps({"question": f"What is {i} + 1?", "answer": answer(i)}) + "\n" for i in range(6))
    files = {
        "run": run,
        "adapter": run / "adapter",
        "jsonl_binary": root / "binary.jsonl",
        "yaml_binary": root / "binary.yaml",
        "yaml_inf": write("inf.yaml", "lr: .inf\n"),
        "yaml_options_list": write("options_list.yaml", "options: [r, 4]\n"),
        "jsonl_null_answers": write("null.jsonl", rows(lambda i: None)),
        "jsonl_empty_answers": write("empty_answers.jsonl", rows(lambda i: "")),
        "jsonl_null_prompt": write("null_prompt.jsonl", '{"question": null, "answer": "1"}\n{"question": "b", "answer": "2"}\n'),
        "jsonl_one": write("one.jsonl", '{"question": "a", "answer": "1"}\n'),
        "jsonl_six": write("six.jsonl", rows(lambda i: str(i + 1))),
        "squad_no_answer": write("squad_no_answer.json", json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
            {"context": "Ada kept the lamp.", "qas": [{"question": "Who?", "id": "1", "answers": [{"text": "Ada", "answer_start": 0}]},
                                                     {"question": "Why?", "id": "2", "answers": []}]}]}]})),
        "squad_no_context": write("squad_no_context.json", json.dumps({"version": "2.0", "data": [{"title": "t", "paragraphs": [
            {"qas": [{"question": "Who?", "id": "1", "answers": [], "is_impossible": True}]}]}]})),
        "jsonl_nested": write("nested.jsonl", '{"question": {"a": 1}, "answer": "1"}\n{"question": "b", "answer": "2"}\n'),
        "chat_not_object": write("chat2.jsonl", '{"messages": ["hi", {"role": "assistant", "content": "yo"}]}\n' * 3),
        "json_data_dict": write("data_dict.json", '{"data": {"question": "a"}}'),
        "parquet_bad": write("bad.parquet", "not parquet at all"),
        "a_file": write("plain.txt", "just a file"),
        "link_other": root / "link-to-taken",
        "link_broken": root / "broken-link",
        "no_tokenizer": root / "no-tokenizer",
        "wrong_shape": root / "wrong-shape",
        "lacking": root / "lacking",
        "model_copy": root / "a-model",
        "empty_gguf": write("empty.gguf", ""),
        "run_spec_str": _with_record(root, run, "run-spec-str", lambda r: r.update(spec="qlora")),
        "run_config_list": _with_record(root, run, "run-config-list", lambda r: r.update(config=[1, 2])),
        "run_lr_text": _with_record(root, run, "run-lr-text", lambda r: r["config"].update(lr="fast")),
        "run_base_int": _with_record(root, run, "run-base-int", lambda r: r["base_model"].update(path=5)),
        "run_status_int": _with_record(root, run, "run-status-int", lambda r: r.update(status=5)),
        "run_unknown_key": _with_record(root, run, "run-unknown-key", lambda r: r["config"].update(bogus_key=1)),
        "run_quantized_kind": _with_record(root, run, "run-quantized-kind", lambda r: r.update(kind="quantized")),
        "run_artifacts_list": _with_record(root, run, "run-artifacts-list", lambda r: r.update(artifacts=["adapter"])),
        "run_truncated_adapter": _with_record(root, run, "run-truncated-adapter", lambda r: None),
        "run_remote_code": _with_record(root, run, "run-remote-code", lambda r: r.update(trust_remote_code=True)),
    }
    (root / "binary.jsonl").write_bytes(b"\xff\xfe\x00binary\x80" * 20)
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00binary\x80" * 20)
    files["link_other"].symlink_to(root / "taken")
    files["link_broken"].symlink_to(root / "nowhere")
    shutil.copytree(tiny, files["no_tokenizer"])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (files["no_tokenizer"] / name).unlink(missing_ok=True)
    shutil.copytree(tiny, files["wrong_shape"])
    config = json.loads((tiny / "config.json").read_text())
    (files["wrong_shape"] / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    shutil.copytree(tiny, files["lacking"])
    (files["lacking"] / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    shutil.copytree(tiny, files["model_copy"])
    adapter = files["run_truncated_adapter"] / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    # a run whose base ships its own code: kbit must not run it unless the flag is given now
    remote_base = root / "remote-base"
    shutil.copytree(tiny, remote_base)
    (remote_base / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "evil.Config"}}))
    (remote_base / "evil.py").write_text("open('EVIL_RAN', 'w').close()\n")
    record = json.loads((files["run_remote_code"] / "kbit.json").read_text())
    record["base_model"]["path"] = str(remote_base)
    record["config"]["model"] = str(remote_base)
    (files["run_remote_code"] / "kbit.json").write_text(json.dumps(record))
    return files


TRAIN = ("train", "--model", "{tiny}", "--max-steps", "1", "--eval-limit", "0")
COMPARE = ("compare", "--model", "{tiny}", "--max-steps", "1")

CASES = [
    # command line and method options
    (("spec", "qlroa"), "unknown method 'qlroa'; did you mean qlora"),
    (("spec", "qlora", "-o", "r=-1"), "option 'r'"),
    (("spec", "qlora", "-o", "r16"), "is not of the form key=value"),
    (("spec", "qlora", "-o", "bogus=1"), "unknown option 'bogus'"),
    (("spec", "qlora", "-o", "lora_dropout=abc"), "option 'lora_dropout' for method qlora: expected a number"),
    (("spec", "qlora", "-o", "double_quant=maybe"), "option 'double_quant' for method qlora: expected true or false"),
    (("spec", "qlora", "-o", "quant_type=int3"), "expected one of nf4, fp4"),
    ((*TRAIN, "--peft", "ia3"), "option 'peft_type'"),
    ((*TRAIN, "--lr", "-1"), "invalid value for 'lr'"),
    ((*TRAIN, "--batch-size", "many"), "invalid value for 'batch_size'"),
    ((*TRAIN, "--scheduler", "zigzag"), "invalid value for 'scheduler'"),
    ((*TRAIN, "--name", "../escape"), "must be a plain folder name"),
    ((*TRAIN, "--eval-steps", "-1"), "invalid value for 'eval_steps'"),
    ((*TRAIN, "--report-to", "mlflow"), "invalid value for 'report_to': expected one of none, tensorboard, wandb, trackio"),
    ((*TRAIN, "-v", "-q"), "--verbose and --quiet contradict each other; give one of them"),
    (("-q", *TRAIN, "--verbose"), "--verbose and --quiet contradict each other"),
    # config files
    ((*TRAIN, "--config", "missing.yaml"), "config file missing.yaml does not exist"),
    ((*TRAIN, "--config", "{yaml_bad}"), "line 2: invalid YAML"),
    ((*TRAIN, "--config", "{yaml_unknown}"), "unknown key 'max_step' (did you mean max_steps?)"),
    ((*TRAIN, "--config", "{yaml_list}"), "must be a mapping of settings"),
    ((*TRAIN, "--config", "{yaml_options}"), "'options' must be a mapping"),
    ((*TRAIN, "--config", "{yaml_value}"), "invalid value for 'lr'"),
    ((*TRAIN, "--config", "{yaml_name}"), "must be a plain folder name"),
    # datasets
    ((*TRAIN, "--dataset", "{jsonl_bad}"), "line 3: invalid JSON"),
    ((*TRAIN, "--dataset", "{jsonl_list}"), "line 2: expected a JSON object"),
    ((*TRAIN, "--dataset", "{jsonl_cols}"), "has no known format (columns: a, q)"),
    ((*TRAIN, "--dataset", "{jsonl_cols}", "--columns", "prompt=q,completion=answer"), "has no column(s) answer"),
    ((*TRAIN, "--dataset", "{jsonl_cols}", "--columns", "prompt=q"), "--columns must map both prompt and completion"),
    ((*TRAIN, "--dataset", "{jsonl_empty}"), "is empty"),
    ((*TRAIN, "--dataset", "{csv_header_only}"), "has a header (prompt, completion) but no rows; add rows below it"),
    ((*TRAIN, "--dataset", "C:\\data\\x.jsonl"), "on this system paths use / between folders and have no drive letter"),
    ((*TRAIN, "--dataset", "{json_bad}"), "invalid JSON"),
    ((*TRAIN, "--dataset", "{chat_bad}"), "line 1: the last message must be the assistant's (role 'assistant')"),
    ((*TRAIN, "--dataset", "nowhere/missing.jsonl"), "dataset file nowhere/missing.jsonl does not exist"),
    ((*TRAIN, "-o", "nonsense=1"), "unknown option 'nonsense' for method qlora"),  # and no runs/ left
    ((*TRAIN, "--dataset", "no_such_hub_dataset_kbit"), "cannot load dataset 'no_such_hub_dataset_kbit'"),
    # models
    (("train", "--model", "/nonexistent/model", "--max-steps", "1"), "does not exist"),
    (("train", "--model", "{no_config}", "--max-steps", "1"), "no config.json"),
    (("train", "--model", "{truncated}", "--max-steps", "1"), "are corrupt or truncated"),
    (("train", "--model", "{pickled}", "--max-steps", "1"), "pickle *.bin weights"),
    (("train", "--model", "{vit}", "--max-steps", "1"), "model type 'vit'"),
    (("train", "--model", "{gguf_bad}", "--max-steps", "1"), "; the file is truncated or damaged: re-download or re-export it"),
    ((*TRAIN, "--max-length", "12"), "max length 12 is too short"),
    # runs and metadata
    ((*TRAIN, "--output", "{taken}"), "already holds other data, not written by this command; kbit never deletes a folder of someone else's files, --overwrite or not"),
    (("train", "--resume", "{not_run}"), "is not a kbit run"),
    (("train", "--resume", "{kbitjson_corrupt}"), "kbit.json is corrupt"),
    (("train", "--resume", "{kbitjson_newer}"), "newer than this kbit reads"),
    # usage errors (typer's own click exceptions)
    (("methods", "bogus"), "Got unexpected extra argument(s) (bogus); see 'kbit methods --help'"),
    ((*TRAIN, "--bogus"), "No such option: --bogus"),
    ((*TRAIN, "--lr", "abc"), "Invalid value for '--lr'"),
    ((*TRAIN, "--max-steps", "1.5"), "Invalid value for '--max-steps'"),
    ((*TRAIN, "--scheduler"), "requires an argument"),
    (("bogus-command",), "No such command 'bogus-command'"),
    (("spec",), "Missing argument"),
    (("quantize",), "Missing argument"),
    (("eval", "--limit", "many"), "Invalid value for '--limit'"),
    (("eval", "{run}", "--variant", "nothing"), "unknown --variant 'nothing'"),
    # settings that are finite and in range
    ((*TRAIN, "--lr", "inf"), "expected a finite number, got inf"),
    ((*TRAIN, "--lr", "nan"), "expected a finite number, got nan"),
    ((*TRAIN, "--warmup-ratio", "nan"), "invalid value for 'warmup_ratio'"),
    ((*TRAIN, "--epochs", "inf"), "invalid value for 'epochs'"),
    ((*TRAIN, "-o", "lora_alpha=nan"), "option 'lora_alpha' for method qlora: expected a finite number"),
    ((*TRAIN, "-o", "lora_dropout=nan"), "option 'lora_dropout' for method qlora: expected a finite number"),
    ((*TRAIN, "-o", "lora_alpha=inf"), "option 'lora_alpha' for method qlora: expected a finite number"),
    ((*TRAIN, "--config", "{yaml_inf}"), "invalid value for 'lr'"),
    ((*TRAIN, "--config", "{yaml_options_list}"), "'options' must be a mapping"),
    ((*TRAIN, "--seed", "4294967296"), "invalid value for 'seed': expected an integer between 0 and 4294967295"),
    ((*TRAIN, "--seed", "-1"), "invalid value for 'seed'"),
    ((*TRAIN, "--max-steps", "-1"), "invalid value for 'max_steps'"),
    ((*TRAIN, "--batch-size", "0"), "invalid value for 'batch_size'"),
    ((*TRAIN, "--grad-accum", "0"), "invalid value for 'grad_accum'"),
    ((*TRAIN, "--max-length", "4"), "invalid value for 'max_length'"),
    (("spec", "qlora", "-o", "compute_dtype=float64"), "expected one of auto, float32, bfloat16, float16"),
    (("spec", "qlora", "-o", "r=1.5"), "option 'r' for method qlora: expected an integer"),
    # run names
    ((*TRAIN, "--name", "x" * 300), "run name is 300 bytes long; use at most 200"),
    ((*TRAIN, "--name", "two\nlines"), "no newlines or control characters"),
    ((*TRAIN, "--name", "<img src=x onerror=alert(1)>"), "holds < >, which some file systems refuse in a folder name"),
    ((*TRAIN, "--name", "a:b"), "holds :, which some file systems refuse"),
    ((*TRAIN, "--name", "   "), "must not be empty or blank"),
    ((*TRAIN, "--name", ""), "must not be empty or blank"),
    ((*TRAIN, "--name", ".hidden"), "must be a plain folder name"),
    ((*TRAIN, "--name", " padded "), "must be a plain folder name"),
    # models and adapters checked against each other before anything is written
    ((*TRAIN, "-o", "target_modules=nosuch"), "target_modules nosuch match no linear layer"),
    ((*TRAIN, "-o", "target_modules=lm_head"), "target_modules names lm_head, the output head"),
    ((*TRAIN, "--dataset", "{jsonl_cols}", "--columns", "prompt=q,completion=a", "--held-out", "1", "--batch-size", "2"),
     "a micro-batch of 2 is more than the 1 training examples"),
    ((*TRAIN, "-o", "target_modules=q_proj,nosuch"), "target_modules nosuch match no linear layer"),
    ((*TRAIN, "-o", "r=100000"), "adapter rank r=100000 exceeds what any targeted layer can use"),
    (("train", "--model", "{wrong_shape}", "--max-steps", "1"), "has shape"),
    (("train", "--model", "{lacking}", "--max-steps", "1"), "config.json describes weights the files lack"),
    (("train", "--model", "{no_tokenizer}", "--max-steps", "1"), "has no tokenizer files"),
    (("train", "--model", "{empty_gguf}", "--max-steps", "1"), "cannot read GGUF model"),
    (("eval", "--model", "{no_tokenizer}"), "has no tokenizer files"),
    # data
    ((*TRAIN, "--dataset", "{jsonl_binary}"), "is not UTF-8 text"),
    ((*TRAIN, "--config", "{yaml_binary}"), "is not UTF-8 text"),
    ((*TRAIN, "--dataset", "{jsonl_null_answers}"), "every one of its 6 rows has an empty or null completion"),
    ((*TRAIN, "--dataset", "{jsonl_empty_answers}"), "every one of its 6 rows has an empty or null completion"),
    ((*TRAIN, "--dataset", "{jsonl_null_prompt}"), "line 1: field 'question' is null"),
    ((*TRAIN, "--dataset", "{jsonl_nested}"), "line 1: field 'question' must be text, got dict"),
    ((*TRAIN, "--dataset", "{jsonl_one}"), "at least 2 are needed"),
    ((*TRAIN, "--dataset", "{chat_not_object}"), "line 1: every message must be an object"),
    ((*TRAIN, "--dataset", "{json_data_dict}"), "expected a JSON list of objects"),
    ((*TRAIN, "--dataset", "{parquet_bad}"), "cannot read"),
    ((*TRAIN, "--dataset", "{jsonl_cols}", "--columns", "prompt=q,completion=a,bogus=x"), "--columns entry 'bogus=x'"),
    # output targets: nothing a command does not own is replaced
    ((*TRAIN, "--output", "{a_file}"), "is a file, not written by this command"),
    ((*TRAIN, "--output", "{link_other}"), "is a symlink to"),
    ((*TRAIN, "--output", "{link_broken}"), "is a broken symlink"),
    ((*TRAIN, "--output", "."), "is the working directory or contains it"),
    ((*TRAIN, "--output", "{run}"), "holds an earlier run; pass --overwrite to replace it or --resume"),
    ((*TRAIN, "--output", "{adapter}", "--overwrite"), "lies inside the kbit run"),
    (("eval", "{run}", "--out", "{run}"), "is the kbit run; a run is never the report folder of another command"),
    (("eval", "{run}", "--out", "{run}", "--overwrite"), "is the kbit run"),
    (("eval", "{run}", "--out", "{adapter}"), "lies inside the kbit run"),
    (("eval", "{run}", "--out", "{model_copy}"), "already holds other data, not written by this command"),
    (("eval", "{run}", "--out", "{a_file}"), "is a file, not written by this command"),
    (("eval", "{run}", "--out", "."), "is the working directory or contains it"),
    (("eval", "{run}", "--out", "{link_other}", "--overwrite"), "is a symlink to"),
    (("quantize", "{run}", "--method", "gptq", "--output", "{run}"), "is the kbit run; a run is never the quantized model"),
    (("quantize", "{run}", "--method", "gptq", "--output", "{adapter}"), "lies inside the kbit run"),
    (("quantize", "{model_copy}", "--method", "gptq", "--output", "{taken}"), "already holds other data"),
    (("quantize", "{model_copy}", "--method", "gptq"), "pass --output DIR"),
    (("quantize", "{run}", "--method", "qlora"), "does not quantize after training"),
    (("quantize", "{run}", "--method", "gptq", "-o", "r=8"), "-o r sets how method 'gptq' trains an adapter, and kbit quantize trains none; pass only its quantization options (bits, group_size"),
    (("quantize", "{run}", "--method", "gptq", "--output", "{model_copy}"), "already holds other data"),
    # kbit.json edited or damaged, read back by eval and --resume
    (("eval", "{run_spec_str}", "--variant", "adapter"), "field 'spec' must be an object, got str"),
    (("train", "--resume", "{run_config_list}"), "field 'config' must be an object, got list"),
    (("train", "--resume", "{run_lr_text}"), "invalid value for 'lr'"),
    (("eval", "{run_base_int}", "--variant", "base"), "field 'base_model.path' must be a string"),
    (("train", "--resume", "{run_status_int}"), "field 'status' must be a string, got int"),
    (("train", "--resume", "{run_unknown_key}"), "unknown config key 'bogus_key'"),
    (("train", "--resume", "{run_quantized_kind}"), "describes a 'quantized' output, not a training run"),
    (("eval", "{run_artifacts_list}"), "field 'artifacts' must be an object, got list"),
    (("eval", "{run_truncated_adapter}", "--variant", "adapter"), "are corrupt or truncated"),
    # model code runs only with --trust-remote-code on this invocation, whatever kbit.json says
    (("eval", "{run_remote_code}", "--variant", "base"), "ships its own model code (auto_map in config.json)"),
    (("train", "--resume", "{run_remote_code}"), "ships its own model code (auto_map in config.json)"),
    # resume and eval of what is not there
    (("train", "--resume", "/nonexistent/run"), "is not a kbit run"),
    (("eval", "/nonexistent/run"), "does not exist"),
    (("eval", "--model", "/nonexistent/model.gguf"), "does not exist"),
    (("eval", "{run}", "--limit", "0"), "invalid value for 'limit'"),
    (("eval", "{run}", "--max-new-tokens", "0"), "invalid value for 'max_new_tokens'"),
    # held-out sizes and answer budgets
    ((*TRAIN, "--held-out", "1.5"), "invalid value for 'held_out': expected a count of held-out examples (e.g. 50), a fraction"),
    ((*TRAIN, "--held-out", "0"), "invalid value for 'held_out'"),
    ((*TRAIN, "--held-out", "lots"), "invalid value for 'held_out'"),
    ((*TRAIN, "--held-out", "100%"), "invalid value for 'held_out'"),
    ((*TRAIN, "--dataset", "{jsonl_six}", "--held-out", "6"), "--held-out 6 leaves no training examples: dataset"),
    ((*TRAIN, "--max-new-tokens", "0"), "invalid value for 'max_new_tokens'"),
    (("eval", "{run}", "--held-out", "5"), "--held-out applies to --dataset: run"),
    (("eval", "{run}", "--dataset", "{jsonl_six}", "--held-out", "-2"), "invalid value for 'held_out'"),
    # the nested SQuAD document
    ((*TRAIN, "--dataset", "{squad_no_answer}"), "data[0].paragraphs[0].qas[1]: has no answer text and is not marked is_impossible"),
    ((*TRAIN, "--dataset", "{squad_no_context}"), "data[0].paragraphs[0]: 'context' must be non-empty text"),
    # kbit compare: refused before any run is trained or any folder written
    ((*COMPARE, "--methods", "lorra"), "unknown method 'lorra'; did you mean lora"),
    ((*COMPARE, "--methods", ""), "--methods is empty; name the methods to compare"),
    ((*COMPARE, "--methods", " , "), "--methods is empty"),
    ((*COMPARE, "--methods", "lora", "-o", "bogus=1"), "option 'bogus' is not an option of any method compared (lora)"),
    ((*COMPARE, "--methods", "lora", "-o", "lora_alpah=8"), "(did you mean lora_alpha?)"),
    ((*COMPARE, "--methods", "lora", "-o", "r16"), "is not of the form key=value"),
    ((*COMPARE, "--methods", "lora", "--max-steps", "0"), "invalid value for 'max_steps'"),
    ((*COMPARE, "--methods", "lora", "--limit", "0"), "invalid value for 'limit'"),
    ((*COMPARE, "--methods", "lora", "--dataset", "{jsonl_bad}"), "line 3: invalid JSON"),
    (("compare", "--methods", "lora", "--model", "/nonexistent/model"), "does not exist"),
    ((*COMPARE, "--methods", "lora", "--out", "{taken}"), "already holds other data, not written by this command"),
    ((*COMPARE, "--methods", "lora", "--out", "{a_file}"), "is a file, not written by this command"),
    ((*COMPARE, "--methods", "lora", "--out", "{run}"), "is the kbit run; a run is never the comparison folder"),
    ((*COMPARE, "--methods", "lora", "--out", "{adapter}", "--overwrite"), "lies inside the kbit run"),
    ((*COMPARE, "--methods", "lora", "--out", "{link_other}"), "is a symlink to"),
    ((*COMPARE, "--methods", "lora", "--out", "."), "is the working directory or contains it"),
    # found probing 0.3: work without end, folders taken for files, names no file system takes
    ((*TRAIN, "--max-new-tokens", "100000000"), "--max-new-tokens 100000000 reaches past the model's context of 512 tokens"),
    (("eval", "{run}", "--max-new-tokens", "512"), "--max-new-tokens 512 reaches past the model's context of 512 tokens"),
    ((*TRAIN, "--config", "{not_run}"), "config file {not_run} is a folder, not a file"),
    ((*TRAIN, "--dataset", "{not_run}"), "dataset file {not_run} is a folder, not data: pass a .jsonl/.json/.csv/.parquet file, or a folder datasets' save_to_disk wrote"),
    ((*TRAIN, "--output", "x" * 300), "is 300 bytes long, and file systems allow 255; choose a shorter name"),
    (("eval", "{run}", "--out", "reports/" + "é" * 200), "is 400 bytes long, and file systems allow 255"),
    (("train", "--resume", "{run}", "--config", "{yaml_unknown}"), "--config does not apply to --resume"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(CASES)])
def test_bad_input(isolated, tiny, run, capsys, args, message):
    files = _files(isolated, tiny, run)
    assert_refused([a.format(**files) for a in args], message.format(**files), capsys, isolated, run)
    assert not (isolated / "EVIL_RAN").exists(), "model code ran without --trust-remote-code"


PLUGIN_CASES = [
    ("kbit_broken:raises_in_hook", "hook resolve_spec raised ZeroDivisionError"),
    ("kbit_broken:wrong_return", "hook resolve_spec returned dict, expected kbit.plugin.QuantizationSpec"),
    ("kbit_broken:lacks_hook", "lacks required hook(s) merge_policy"),
    ("kbit_import_error", "import failed: ImportError"),
]


@pytest.mark.parametrize("target, message", PLUGIN_CASES)
def test_bad_plugins(isolated, plugin_site, monkeypatch, capsys, target, message):
    plugin_site.add("kbit-broken", "0.0.3", {"bad": target}, modules=("kbit_broken", "kbit_import_error"))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))
    code, err = run_in_process(["spec", "bad"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert message in err and "kbit-broken 0.0.3" in err
    with contextlib.suppress(SystemExit):
        main(["methods"])
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("bad broken: ")]
    assert "kbit-broken 0.0.3" in line and message in line  # the listing says whose plugin to fix too


def test_duplicate_method_name_is_reported_and_the_builtin_kept(isolated, plugin_site, monkeypatch, capsys):
    plugin_site.add("kbit-dupe", "2.0", {"qlora": "kbit_toy"}, modules=("kbit_toy",))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))
    records = registry_module.default_registry().records()
    dupe = next(r for r in records if r.distribution == "kbit-dupe")
    assert dupe.status == "broken" and "already provided by kbit" in dupe.error
    assert registry_module.default_registry().get("qlora").distribution == "kbit"
