"""qalora: a Q4_1 base (llama.cpp's quantizer), a QA-LoRA adapter, and a Q4_1 GGUF that is the trained model."""

import importlib.util
import json
import signal
import subprocess
import sys
import time

import pytest

from kbit.plugin import DeviceInfo, dequantize_q4_1, q4_1_codes, unpack_q4_1
from kbit.testing import MethodContract, get_method, make_tiny_model
from tests.conftest import run_kbit

TRAIN = ("--method", "qalora", "--max-steps", "4", "--batch-size", "2", "-o", "r=4", "--max-examples", "40",
         "--eval-limit", "4", "--logging-steps", "1", "--save-steps", "2", "--seed", "3", "--max-new-tokens", "6")


class TestQaloraContract(MethodContract):
    method = "qalora"


@pytest.fixture(scope="module")
def qalora_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("qalora") / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_a_run_trains_at_the_methods_own_learning_rate_unless_lr_is_given(qalora_run):
    from kbit.core.runs.record import read_record

    record = read_record(qalora_run)
    own = get_method("qalora").resolve_spec({}, DeviceInfo.cpu()).training.learning_rate
    assert own is not None and record.config.lr == own == record.decisions["lr"]["value"]
    assert record.decisions["lr"]["reason"] == "method qalora's default"


def test_the_base_is_llama_cpp_q4_1_and_measured_as_such(tiny):
    import torch

    from kbit.core.model.bases import load_base
    from kbit.core.measure.metrics import linear_weight_bits
    from kbit.core.model.sources import load_causal_lm
    from kbit.plugins._q4_1 import Q41Linear

    method = get_method("qalora")
    spec = method.resolve_spec({}, DeviceInfo.cpu())
    model = load_base(method, spec, str(tiny))
    plain = load_causal_lm(str(tiny))
    layer, original = model.model.layers[0].mlp.down_proj, plain.model.layers[0].mlp.down_proj
    assert isinstance(layer, Q41Linear)
    assert torch.equal(layer.dequantize(), dequantize_q4_1(*q4_1_codes(original.weight)))
    assert linear_weight_bits(model)["bits_per_weight"] == pytest.approx(5.0)  # 20 bytes per 32 weights


@pytest.mark.slow
def test_the_q4_1_file_written_by_the_run_is_the_trained_model(qalora_run, tiny):
    import gguf
    import torch
    from safetensors.torch import load_file

    record = json.loads((qalora_run / "kbit.json").read_text())
    assert record["status"] == "finished" and record["merge_policy"]["export"] == "q4_1"
    (export,) = record["exports"]
    assert export["type"] == "q4_1" and export["file"].endswith("-q4_1.gguf")
    # the file is checked against the trained adapter model, in the runtime, on the items the run scores
    assert export["items"] == 4 and export["source"]["model"] == "the trained adapter model"
    assert export["runtime"] == ("llama.cpp" if importlib.util.find_spec("llama_cpp") else "transformers")
    variants = record["metrics"]["variants"]
    assert list(variants) == ["adapter", "merged", "gguf q4_1"]
    assert variants["gguf q4_1"]["exact_match"] == export["exact_match"] and variants["gguf q4_1"]["items"] == 4
    assert variants["adapter"]["exact_match"] == export["source"]["exact_match"]  # the same model, items and budget
    assert export["nonfinite_positions"] == 0 and export["top1_agreement_within_ties"] >= export["gate"]["min_top1"], export
    # The merge moved only the block offsets: the file's codes and scales are the base's, exactly.
    reader = gguf.GGUFReader(str(qalora_run / export["file"]))
    tensors = {t.name: t for t in reader.tensors}
    assert {tensors[n].tensor_type.name for n in tensors if n.startswith("blk.") and n.endswith("weight")
            and "norm" not in n} == {"Q4_1"}
    base = load_file(tiny / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    d0, m0, q0 = q4_1_codes(base)
    raw = torch.from_numpy(tensors["blk.0.ffn_down.weight"].data.copy()).reshape(base.shape[0], -1)
    d1, m1, q1 = unpack_q4_1(raw)
    assert torch.equal(q1, q0) and torch.equal(d1, d0)
    assert not torch.equal(m1, m0), "training moved no offset"
    merged = load_file(qalora_run / "merged" / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    assert torch.allclose(dequantize_q4_1(d1, m1, q1), merged, atol=float(m1.abs().max()) * 2**-10)


@pytest.mark.slow
def test_a_width_that_is_not_whole_blocks_is_refused_before_anything_is_written(tmp_path):
    model = make_tiny_model(tmp_path / "narrow", hidden_size=48)
    result = run_kbit("train", "--model", str(model), "--output", str(tmp_path / "run"), *TRAIN)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kbit: error:")]
    assert len(lines) == 1 and "multiple of the Q4_1 block (32)" in lines[0] and "hidden_size=48" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    ({"group_size": "64"}, "expected 32: a Q4_1/Q5_1 block holds 32 weights"),
    ({"peft_type": "dora"}, "option 'peft_type'"),
    ({"merge_dtype": "bfloat16"}, "merges in float32"),
])
def test_settings_the_format_cannot_hold_are_refused(options, message):
    from kbit.plugin import ConfigError

    with pytest.raises(ConfigError, match=message):
        get_method("qalora").resolve_spec(options, DeviceInfo.cpu())


@pytest.mark.slow
def test_a_killed_qalora_run_resumes_to_the_same_model(qalora_run, tiny, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "kbit", "train", "--model", str(tiny), "--output", str(out),
                                *TRAIN], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "checkpoint-2" / "kbit-complete").exists() and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    result = run_kbit("train", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(qalora_run / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(float((a[k] - b[k]).abs().max()) < 1e-6 for k in a)
    assert json.loads((out / "kbit.json").read_text())["exports"][0]["type"] == "q4_1"


@pytest.mark.slow
def test_a_q5_1_run_trains_on_q5_1_blocks_and_its_file_moves_only_the_offsets(tiny, tmp_path):
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *TRAIN, "-o", "target=q5_1")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "kbit.json").read_text())
    (export,) = record["exports"]
    assert export["type"] == "q5_1" and record["spec"]["weights_bits"] == 5
    assert export["top1_agreement_within_ties"] >= export["gate"]["min_top1"], export
    reader = gguf.GGUFReader(str(out / export["file"]))
    stored = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert stored.tensor_type == gguf.GGMLQuantizationType.Q5_1
    base = load_file(tiny / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    original = gguf.quants.quantize(base.numpy(), gguf.GGMLQuantizationType.Q5_1).reshape(base.shape[0], -1, 24)
    written = np.asarray(stored.data).reshape(base.shape[0], -1, 24)
    # bytes 0-1: the scale d, 2-3: the offset m, 4-23: the 5-bit codes
    assert np.array_equal(written[..., :2], original[..., :2]) and np.array_equal(written[..., 4:], original[..., 4:])
    assert not np.array_equal(written[..., 2:4], original[..., 2:4]), "training moved no offset"
