from kbit.testing import MethodContract


class TestQloraContract(MethodContract):
    method = "qlora"


class TestQloraDoraContract(MethodContract):
    method = "qlora"
    options = {"peft_type": "dora", "r": "4"}


def test_adapter_dtype_is_float32_unless_storage_needs_one_dtype():
    from kbit.core.device import DeviceInfo
    from kbit.core.registry import get_method

    qlora, cpu = get_method("qlora"), DeviceInfo(kind="cpu")
    assert qlora.resolve_spec({}, cpu).training.adapter_dtype == "float32"
    # FSDP flattens base and adapter together, so a float storage dtype carries over to the adapter
    assert qlora.resolve_spec({"quant_storage": "bfloat16"}, cpu).training.adapter_dtype == "bfloat16"
    assert qlora.resolve_spec({"quant_storage": "bfloat16", "adapter_dtype": "float32"}, cpu).training.adapter_dtype == "float32"
    assert qlora.resolve_spec({"adapter_dtype": "bfloat16"}, cpu).training.adapter_dtype == "bfloat16"


def test_fsdp_storage_trains_and_merges(tiny, tmp_path):
    """4-bit codes stored as bfloat16 (FSDP's setting) read as floats that sum to NaN: the check that
    prepare_model leaves base weights alone must still see them as unchanged, and the merge pass."""
    import json

    from tests.conftest import run_kbit

    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(tiny), "--max-steps", "2", "--batch-size", "2", "-o", "r=4",
                      "--max-examples", "40", "--eval-limit", "2", "-o", "quant_storage=bfloat16", "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "kbit.json").read_text())
    assert record["spec"]["extras"]["quant_storage"] == "bfloat16" and record["merge"]["top1_agreement"] >= 0.99
