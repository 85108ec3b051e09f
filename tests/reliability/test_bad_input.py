"""The bad-input table: each case exits 2 with one line naming the problem, no traceback, no output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kbit.core import registry as registry_module
from kbit.core.cli import main
from kbit.core.registry import Registry
from kbit.testing import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _files(root: Path, tiny: Path) -> dict[str, Path]:
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
    return files


TRAIN = ("train", "--model", "{tiny}", "--max-steps", "1", "--eval-limit", "0")

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
    ((*TRAIN, "--dataset", "{json_bad}"), "invalid JSON"),
    ((*TRAIN, "--dataset", "{chat_bad}"), "row 1: the last message must have role 'assistant'"),
    ((*TRAIN, "--dataset", "nowhere/missing.jsonl"), "dataset file nowhere/missing.jsonl does not exist"),
    ((*TRAIN, "--dataset", "no_such_hub_dataset_kbit"), "cannot load dataset 'no_such_hub_dataset_kbit'"),
    # models
    (("train", "--model", "/nonexistent/model", "--max-steps", "1"), "does not exist"),
    (("train", "--model", "{no_config}", "--max-steps", "1"), "no config.json"),
    (("train", "--model", "{truncated}", "--max-steps", "1"), "are corrupt or truncated"),
    (("train", "--model", "{pickled}", "--max-steps", "1"), "pickle *.bin weights"),
    (("train", "--model", "{vit}", "--max-steps", "1"), "model type 'vit'"),
    (("train", "--model", "{gguf_bad}", "--max-steps", "1"), "cannot read GGUF model"),
    ((*TRAIN, "--max-length", "12"), "max length 12 is too short"),
    # runs and metadata
    ((*TRAIN, "--output", "{taken}"), "is not empty; pass --overwrite"),
    (("train", "--resume", "{not_run}"), "is not a kbit run"),
    (("train", "--resume", "{kbitjson_corrupt}"), "kbit.json is corrupt"),
    (("train", "--resume", "{kbitjson_newer}"), "newer than this kbit reads"),
]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(CASES)])
def test_bad_input(isolated, tiny, capsys, args, message):
    files = _files(isolated, tiny)
    before = sorted(p.relative_to(isolated) for p in isolated.rglob("*") if "cache" not in p.parts)
    code, err = _run([a.format(**files) for a in args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kbit: error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err
    after = sorted(p.relative_to(isolated) for p in isolated.rglob("*") if "cache" not in p.parts)
    assert after == before, "the failed command left files behind"


PLUGIN_CASES = [
    ("kbit_broken:raises_in_hook", "hook resolve_spec raised ZeroDivisionError"),
    ("kbit_broken:wrong_return", "hook resolve_spec returned dict, expected kbit.QuantizationSpec"),
    ("kbit_broken:lacks_hook", "lacks required hook(s) merge_policy"),
    ("kbit_import_error", "import failed: ImportError"),
]


@pytest.mark.parametrize("target, message", PLUGIN_CASES)
def test_bad_plugins(isolated, plugin_site, monkeypatch, capsys, target, message):
    plugin_site.add("kbit-broken", "0.0.3", {"bad": target}, modules=("kbit_broken", "kbit_import_error"))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))
    code, err = _run(["spec", "bad"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert message in err and "kbit-broken 0.0.3" in err


def test_duplicate_method_name_is_reported_and_the_builtin_kept(isolated, plugin_site, monkeypatch, capsys):
    plugin_site.add("kbit-dupe", "2.0", {"qlora": "kbit_toy"}, modules=("kbit_toy",))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))
    records = registry_module.default_registry().records()
    dupe = next(r for r in records if r.distribution == "kbit-dupe")
    assert dupe.status == "broken" and "already provided by kbit" in dupe.error
    assert registry_module.default_registry().get("qlora").distribution == "kbit"
