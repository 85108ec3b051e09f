"""qat: LoRA trained through the exact rounding of a GGUF type; the file of that type is the trained model."""

import json

import numpy as np
import pytest

from kbit.plugin import DeviceInfo
from kbit.testing import MethodContract, get_method
from tests.conftest import run_kbit

TRAIN = ("--method", "qat", "--max-steps", "4", "--batch-size", "2", "-o", "r=4", "--max-examples", "40",
         "--eval-limit", "4", "--logging-steps", "1", "--seed", "3", "--max-new-tokens", "6")


class TestQatContract(MethodContract):
    method = "qat"


@pytest.fixture(scope="module")
def qat_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat") / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *TRAIN, "-o", "target=q5_0")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_the_q5_0_file_written_by_the_run_holds_merged_exactly_and_merged_is_the_trained_model(qat_run):
    import gguf
    from safetensors.torch import load_file

    from kbit.core.export.grids import round_to_grid

    record = json.loads((qat_run / "kbit.json").read_text())
    assert record["status"] == "finished" and record["merge_policy"]["export"] == "q5_0"
    # the merged model computes what the trained one did, within float rounding of the logits
    assert record["merge"]["max_abs_logit_diff"] <= 1e-5 and record["merge"]["top1_agreement"] == 1.0
    (export,) = record["exports"]
    assert export["type"] == "q5_0" and export["top1_agreement_within_ties"] == 1.0 and export["answer_kl"] < 1e-3
    merged = load_file(qat_run / "merged" / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(round_to_grid(merged[name], "q5_0").numpy(), merged[name].numpy())  # already on the grid
    reader = gguf.GGUFReader(str(qat_run / export["file"]))
    stored = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    assert stored.tensor_type == gguf.GGMLQuantizationType.Q5_0
    values = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(merged[name].shape)
    assert np.array_equal(values, merged[name].numpy()), "the file does not hold the merged weights"


@pytest.mark.slow
def test_an_unsupported_target_is_refused_in_one_line(tiny, tmp_path):
    result = run_kbit("train", "--model", str(tiny), "--output", str(tmp_path / "run"), *TRAIN, "-o", "target=q4_k")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kbit: error:")]
    assert len(lines) == 1 and "target" in lines[0] and "q4_0" in lines[0] and "mxfp4" in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_a_sixteen_bit_merge_is_refused():
    from kbit.plugin import ConfigError

    with pytest.raises(ConfigError, match="merges in float32"):
        get_method("qat").resolve_spec({"merge_dtype": "bfloat16"}, DeviceInfo.cpu())


@pytest.mark.slow
@pytest.mark.parametrize("model_type, layers", [("gemma2", 2), ("gemma3_text", 6), ("phi3", 2)])
def test_a_gemma_or_phi3_run_deploys_a_file_llama_cpp_runs_as_trained(kbit_tiny_model_factory, tmp_path, model_type,
                                                                      layers):
    pytest.importorskip("llama_cpp")
    # Gemma: a window shorter than every prompt of the tiny character-level vocabulary, so llama.cpp must slide it as
    # transformers does. Phi-3: its fused qkv and gate_up projections go through the rounding and into the file.
    window = {"sliding_window": 8} if model_type.startswith("gemma") else {}
    model = kbit_tiny_model_factory(model_type=model_type, layers=layers, **window)
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(model), "--output", str(out), *TRAIN, "-o", "target=q4_0")
    assert result.returncode == 0, result.stderr[-3000:]
    (export,) = json.loads((out / "kbit.json").read_text())["exports"]
    assert export["runtime"] == "llama.cpp" and export["type"] == "q4_0"
    assert export["top1_agreement_within_ties"] == 1.0 and export["answer_kl"] < 1e-3
