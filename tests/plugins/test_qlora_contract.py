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
