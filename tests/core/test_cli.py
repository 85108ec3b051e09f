import json
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
                               "target_modules": "all-linear", "qa_group_size": None}
    assert (extras["quant_type"], extras["double_quant"], extras["block_size"]) == ("nf4", True, 64)
    from kbit.core.device import detect_device, resolve_compute_dtype

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


def test_debug_shows_traceback():
    result = run_kbit("--debug", "spec", "qlroa")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_listing_and_help_import_no_torch():
    code = ("import sys; from kbit.core.cli import main\n"
            "try:\n    main(['methods', '--json'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    start = time.perf_counter()
    assert run_kbit("--help").returncode == 0
    assert time.perf_counter() - start < 5
