import json
import os
import subprocess
import sys
import time

from tests.conftest import run_kbit


def test_methods_json_lists_qlora_ready():
    result = run_kbit("methods", "--json")
    assert result.returncode == 0, result.stderr
    qlora = next(m for m in json.loads(result.stdout) if m["name"] == "qlora")
    assert qlora["status"] == "ready" and qlora["distribution"] == "kbit"


def test_spec_reflects_overrides():
    result = run_kbit("spec", "qlora", "-o", "r=16", "-o", "compute_dtype=float32", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["spec"]["adapter"]["r"] == 16
    assert data["spec"]["training"]["compute_dtype"] == "float32"
    assert data["quant_config"]["class"] == "BitsAndBytesConfig"
    assert data["quant_config"]["bnb_4bit_quant_type"] == "nf4"
    assert data["quant_config"]["bnb_4bit_use_double_quant"] is True


def test_default_spec_matches_the_reference_pipeline():
    data = json.loads(run_kbit("spec", "qlora", "--json").stdout)["spec"]
    assert (data["method"], data["weights_bits"], data["activations_bits"], data["kv_cache_bits"]) == ("qlora", 4, None, None)
    assert (data["symmetric"], data["backend"], data["group_size"]) == (False, "bitsandbytes", 64)
    extras = data["extras"]
    assert data["adapter"] == {"peft_type": "lora", "r": 64, "lora_alpha": 16, "lora_dropout": 0.05,
                               "target_modules": "all-linear", "qa_group_size": None, "fake_quant": None,
                               "init": "default", "fake_quant_after": 0.0, "use_rslora": False}
    assert (extras["quant_type"], extras["double_quant"], extras["block_size"]) == ("nf4", True, 64)
    from kbit.core.system.device import detect_device, resolve_compute_dtype

    # No GPU here: auto is bf16 only where the CPU has native bf16 and the probe measured it faster.
    assert data["training"]["compute_dtype"] == resolve_compute_dtype("auto", detect_device())
    assert data["training"]["adapter_dtype"] == "float32"
    assert (data["training"]["merge_after_train"], extras["keep_lm_head_fp16"]) == (True, False)


def test_unknown_method_exits_2_naming_the_closest():
    result = run_kbit("spec", "qlroa")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "qlora" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_option_exits_2_naming_it():
    result = run_kbit("spec", "qlora", "-o", "r=-1")
    assert result.returncode == 2 and "'r'" in result.stderr and "Traceback" not in result.stderr


def test_debug_shows_traceback_and_keeps_the_exit_code():
    result = run_kbit("--debug", "spec", "qlroa")
    assert result.returncode == 2 and "Traceback" in result.stderr
    after_the_command = run_kbit("spec", "qlroa", "--debug")  # kbit's flag wherever it stands
    assert after_the_command.returncode == 2 and "UnknownMethodError" in after_the_command.stderr
    assert "No such option" not in after_the_command.stderr


def test_a_second_dataset_or_option_value_is_refused_rather_than_one_dropped():
    twice = run_kbit("train", "--dataset", "a.jsonl", "--dataset=b.jsonl", "--max-steps", "1")
    assert twice.returncode == 2 and "--dataset is given 2 times (a.jsonl, b.jsonl); kbit reads one dataset" in twice.stderr
    held = run_kbit("eval", "--held-out", "a.jsonl", "--held-out", "b.csv")
    assert held.returncode == 2 and "--held-out is given 2 times (a.jsonl, b.csv); kbit scores one held-out set" in held.stderr
    assert "-o r is given twice (8 and 16); pass it once" in run_kbit("spec", "qlora", "-o", "r=8", "-o", "r=16").stderr
    assert "--peft dora and -o peft_type=vera ask for two adapter types" in run_kbit(
        "train", "--peft", "dora", "-o", "peft_type=vera").stderr


def test_listing_and_help_import_no_torch():
    code = ("import sys; from kbit.core.cli import main\n"
            "try:\n    main(['methods', '--json'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    start = time.perf_counter()
    assert run_kbit("--help").returncode == 0
    assert time.perf_counter() - start < 5


def test_spec_options_lists_every_option_with_its_default_and_help():
    from kbit.core.methods.registry import get_method

    schema = get_method("qlora").info.options
    wide = {**os.environ, "COLUMNS": "400"}
    table = run_kbit("spec", "qlora", "--options", env=wide)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    for option in schema.options:
        assert option.help and any(option.name in row and option.help in row for row in rows), option.name
    assert any("quant_type" in row and "nf4" in row and "one of nf4, fp4" in row for row in rows)
    listed = json.loads(run_kbit("spec", "qlora", "--options", "--json").stdout)
    assert listed == schema.describe()
    refused = run_kbit("spec", "qlora", "--options", "-o", "r=8")
    assert refused.returncode == 2 and "drop -o" in refused.stderr


def test_methods_json_carries_each_methods_options():
    methods = {m["name"]: m for m in json.loads(run_kbit("methods", "--json").stdout)}
    options = {o["name"]: o for o in methods["qlora"]["options"]}
    assert options["r"]["default"] == 64 and options["r"]["type"] == "integer" and options["r"]["help"]
    assert options["quant_type"] == {"name": "quant_type", "default": "nf4", "type": "choice",
                                     "allowed": "one of nf4, fp4", "choices": ["nf4", "fp4"], "help": "4-bit data type"}


def test_the_program_freezes_its_imports_and_an_in_process_call_leaves_the_collector_alone(tmp_path):
    # One script, two calls of the export command (refused: no such path), each after the pipeline's imports.
    code = ("import gc, sys; from kbit.core.cli import main\n"
            "def frozen_after(argv, program):\n"
            "    sys.argv = ['kbit', *argv]\n"
            "    try:\n        main(None if program else argv)\n"
            "    except SystemExit as exit:\n        assert exit.code == 2, exit.code\n"
            "    return gc.get_freeze_count()\n"
            f"argv = ['export', {str(tmp_path / 'none')!r}]\n"
            "print(frozen_after(argv, program=False), frozen_after(argv, program=True))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    in_process, as_program = map(int, result.stdout.split())
    assert in_process == 0 and as_program > 100_000
