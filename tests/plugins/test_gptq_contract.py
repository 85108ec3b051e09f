import json

import pytest

from kbit.core.system.device import DeviceInfo
from kbit.core.errors import ConfigError
from kbit.core.methods.registry import get_method
from kbit.plugins._ptq import resolve_group_size
from kbit.testing import MethodContract
from tests.conftest import run_kbit
from tests.plugins._ptq_checks import FAST, requantize_run, train_and_quantize
from tests.plugins.conftest import needs_backend

pytestmark = needs_backend("gptq")


class TestGptqContract(MethodContract):
    method = "gptq"
    options = FAST


def test_capabilities_and_spec():
    chosen = get_method("gptq")
    assert chosen.info.post_training_quantization and chosen.info.needs_calibration
    assert chosen.implements("quantize_model")
    spec = chosen.resolve_spec({"bits": "8", "group_size": "32"}, DeviceInfo.cpu())
    assert (spec.weights_bits, spec.group_size, spec.symmetric, spec.backend) == (8, 32, True, "llm-compressor")
    assert spec.extras["ignore"] == ["lm_head"] and spec.training.compute_dtype == "float32"
    assert chosen.build_quant_config(spec) is None
    assert chosen.merge_policy(spec).base == "original"


@pytest.mark.parametrize("options, message", [
    ({"peft_type": "dora"}, "expected one of lora, vera"),
    ({"bits": "3"}, "expected one of 4, 8"),
    ({"group_size": "0"}, "group_size"),
])
def test_unsupported_settings_are_refused_at_resolve_time(options, message):
    with pytest.raises(ConfigError, match=message):
        get_method("gptq").resolve_spec(options, DeviceInfo.cpu())


def test_group_size_auto_and_explicit():
    assert resolve_group_size("auto", {"hidden_size": 64, "intermediate_size": 128}) == 64
    assert resolve_group_size("auto", {"hidden_size": 576, "intermediate_size": 1536}) == 64  # SmolLM2-135M
    assert resolve_group_size("auto", {"hidden_size": 2048, "intermediate_size": 8192}) == 128
    with pytest.raises(ConfigError, match="layer width hidden_size=576.*e.g. group_size=64"):
        resolve_group_size(128, {"hidden_size": 576, "intermediate_size": 1536})
    with pytest.raises(ConfigError, match="no group size"):
        resolve_group_size("auto", {"hidden_size": 100, "intermediate_size": 200})


@pytest.mark.slow
def test_bad_group_size_is_refused_before_anything_is_written(tiny, tmp_path):
    from transformers import AutoConfig

    chosen = get_method("gptq")
    spec = chosen.resolve_spec({**FAST, "group_size": "48"}, DeviceInfo.cpu())
    message = "group_size=48 does not divide the layer width hidden_size=64"
    with pytest.raises(ConfigError, match=message):  # at planning time, from the model's config alone
        chosen.resolve_for_model(spec, AutoConfig.from_pretrained(tiny))
    with pytest.raises(ConfigError, match=message):  # and again at quantization, for a spec made elsewhere
        chosen.quantize_model(tiny, spec, ["text"], tmp_path)
    result = run_kbit("train", "--model", str(tiny), "--method", "gptq", "-o", "group_size=48",
                      "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and message in result.stderr and not (tmp_path / "run").exists()


def test_auto_group_size_is_recorded_as_the_size_used(tiny):
    from transformers import AutoConfig

    chosen = get_method("gptq")
    spec = chosen.resolve_for_model(chosen.resolve_spec(FAST, DeviceInfo.cpu()), AutoConfig.from_pretrained(tiny))
    assert spec.group_size == 64 and spec.extras["group_size_requested"] == "auto"


@pytest.mark.slow
def test_train_quantize_and_requantize_run(tiny, tmp_path):
    train_and_quantize(tiny, "gptq", tmp_path / "run", bits=4, symmetric=True)
    requantize_run(tmp_path / "run", "gptq")


def test_quantize_cli_on_a_model_directory(tiny, tmp_path):
    out = tmp_path / "q"
    args = [f"-o{k}={v}" for k, v in FAST.items()]
    result = run_kbit("quantize", str(tiny), "--method", "gptq", *args, "--output", str(out), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["format"] == "compressed-tensors"
    record = json.loads((out / "kbit.json").read_text())
    assert record["kind"] == "quantized" and record["method"] == "gptq"
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_quantize_cli_refuses_a_method_without_the_hook(tiny, tmp_path):
    result = run_kbit("quantize", str(tiny), "--method", "lora", "--output", str(tmp_path / "q"))
    assert result.returncode == 2 and "does not quantize after training" in result.stderr


def test_a_config_without_the_widths_groups_are_sized_from_is_refused_in_one_line():
    from transformers import GPT2Config

    gptq = get_method("gptq")
    with pytest.raises(ConfigError, match="gpt2 model's config has no intermediate_size.*choose another method"):
        gptq.resolve_for_model(gptq.resolve_spec({}, DeviceInfo.cpu()), GPT2Config(n_embd=64, n_layer=2, n_head=4))
