"""gguf: LoRA on a GGUF file's own blocks, on the tiny random model written to a Q8_0 GGUF by kbit's exporter.

The contract suite's tiny model is an ordinary Hugging Face folder, which this method refuses (it trains on
a GGUF file's weights), so this module overrides the ``kbit_tiny_model`` fixture with the folder
``--model FILE.gguf`` loads: the tiny model written as Q8_0 (its widths, 64 and 128, hold whole blocks) and
converted by ``kbit.core.model.sources.resolve_model`` into a cache of the module's own.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from kbit.plugin import ConfigError, DeviceInfo
from kbit.testing import MethodContract, get_method, make_tiny_model
from tests.conftest import run_kbit
from tests.plugins.conftest import train_tiny


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from kbit.core.export.gguf import BaseModel, write_gguf

    folder = tmp_path_factory.mktemp("gguf-method")
    path = folder / "tiny-q8_0.gguf"
    write_gguf(make_tiny_model(folder / "tiny"), path, "q8_0", name="tiny", base=BaseModel(name="tiny"))
    return path


@pytest.fixture(scope="module")
def kbit_tiny_model(tiny_gguf, tmp_path_factory) -> Path:
    """The tiny model as ``--model tiny-q8_0.gguf`` loads it (overrides kbit's fixture in this module)."""
    from kbit.core.model.sources import resolve_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KBIT_CACHE", str(tmp_path_factory.mktemp("kbit-cache")))
        yield Path(resolve_model(str(tiny_gguf)).path)


class TestGgufContract(MethodContract):
    method = "gguf"


@pytest.mark.parametrize("options, expected", [({}, "q8_0"), ({"runtime": "exact"}, None)])
def test_layers_train_on_the_input_llama_cpp_multiplies_by_default(kbit_tiny_model, options, expected):
    from kbit.core.model.bases import load_base
    from kbit.plugin import QuantizedLinear

    method = get_method("gguf")
    spec = method.resolve_for_model(method.resolve_spec(options, DeviceInfo.cpu()), _config(kbit_tiny_model))
    layers = [m for m in load_base(method, spec, str(kbit_tiny_model)).modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.activations == expected for m in layers)  # Q8_0 weights: Q8_0 activations


def test_the_base_holds_the_file_s_blocks_and_is_measured_as_stored(kbit_tiny_model, tiny_gguf):
    import torch

    from kbit.core.model.bases import load_base
    from kbit.core.measure.metrics import linear_weight_bits
    from kbit.core.model.sources import load_causal_lm

    method = get_method("gguf")
    spec = method.resolve_for_model(method.resolve_spec({}, DeviceInfo.cpu()), _config(kbit_tiny_model))
    assert (spec.weights_bits, spec.backend) == (8, "gguf-q8_0")
    model = load_base(method, spec, str(kbit_tiny_model))
    plain = load_causal_lm(str(kbit_tiny_model))
    layer = model.model.layers[1].mlp.down_proj
    stored = {t.name: t for t in gguf.GGUFReader(str(tiny_gguf)).tensors}["blk.1.ffn_down.weight"]
    assert layer.ggml_type == "Q8_0" and np.array_equal(layer.blocks.numpy(), np.asarray(stored.data))
    assert torch.equal(layer.dequantize(), plain.model.layers[1].mlp.down_proj.weight)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, plain.model.layers[0].self_attn.q_proj.weight)
    assert linear_weight_bits(model)["bits_per_weight"] == pytest.approx(8.5)  # 34 bytes per 32 weights


def test_blocks_that_are_not_the_loaded_weights_are_refused(kbit_tiny_model, tmp_path):
    import shutil

    from kbit.core.model.bases import load_base
    from kbit.core.export.gguf import BaseModel, write_gguf

    other = tmp_path / "other.gguf"
    write_gguf(make_tiny_model(tmp_path / "other", seed=1), other, "q8_0", name="other", base=BaseModel(name="other"))
    folder = Path(shutil.copytree(kbit_tiny_model, tmp_path / "converted"))
    record = json.loads((folder / "kbit-source.json").read_text())
    (folder / "kbit-source.json").write_text(json.dumps({**record, "gguf": str(other)}))
    method = get_method("gguf")
    spec = method.resolve_spec({}, DeviceInfo.cpu())
    with pytest.raises(ConfigError, match="blocks in .*other.gguf do not dequantize to the weights transformers loaded"):
        load_base(method, spec, str(folder))


def test_a_converted_base_whose_gguf_file_is_gone_is_refused(kbit_tiny_model, tmp_path):
    import shutil

    folder = Path(shutil.copytree(kbit_tiny_model, tmp_path / "converted"))
    record = json.loads((folder / "kbit-source.json").read_text())
    (folder / "kbit-source.json").write_text(json.dumps({**record, "gguf": str(tmp_path / "moved.gguf")}))
    method = get_method("gguf")
    with pytest.raises(ConfigError, match="moved.gguf, the GGUF file this model was converted from, and it is gone"):
        method.resolve_for_model(method.resolve_spec({}, DeviceInfo.cpu()), _config(folder))


@pytest.mark.slow
def test_a_base_not_read_from_a_gguf_file_is_refused_before_anything_is_written(tmp_path):
    model = make_tiny_model(tmp_path / "plain")
    result = run_kbit("train", "--model", str(model), "--method", "gguf", "--max-steps", "2",
                      "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kbit: error:")]
    assert len(lines) == 1 and "method gguf trains on a GGUF file's own weights; pass --model FILE.gguf" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, message", [
    ({"peft_type": "dora"}, "llama.cpp applies plain LoRA adapters over a GGUF file, not dora"),
    ({"merge_dtype": "bfloat16"}, "merges into the file's dequantized weights in float32"),
])
def test_settings_a_llama_cpp_adapter_cannot_hold_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        get_method("gguf").resolve_spec(options, DeviceInfo.cpu())


def test_the_policy_asks_for_a_llama_cpp_adapter_over_the_unchanged_file():
    method = get_method("gguf")
    policy = method.merge_policy(method.resolve_spec({}, DeviceInfo.cpu()))
    assert policy.adapter_gguf and policy.action == "merge" and policy.base == "dequantized" and policy.dtype == "float32"
    kept = method.merge_policy(method.resolve_spec({"merge_after_train": "false"}, DeviceInfo.cpu()))
    assert kept.action == "keep_adapter" and kept.adapter_gguf


@pytest.mark.slow
def test_training_on_the_gguf_file_merges_into_exactly_its_weights(tiny_gguf, kbit_tiny_model, tmp_path):
    record = train_tiny(tiny_gguf, "gguf", tmp_path / "run")
    assert record["spec"]["backend"] == "gguf-q8_0" and record["merge_policy"]["adapter_gguf"] is True
    merge = record["merge"]
    assert merge["top1_agreement"] == 1.0 and merge["max_abs_logit_diff"] < 1e-3, merge
    # the adapter ships as a llama.cpp LoRA GGUF over the unchanged file, checked applied to it
    (export,) = record["exports"]
    assert export["type"] == "lora" and export["file"] == f"gguf/{record['name']}-lora.gguf"
    assert export["base_file"] == str(tiny_gguf.resolve()) and export["source"]["model"] == "the trained adapter model"
    assert export["runtime"] == ("llama.cpp" if importlib.util.find_spec("llama_cpp") else "transformers")
    assert export["nonfinite_positions"] == 0 and export["top1_agreement_within_ties"] >= export["gate"]["min_top1"]
    reader = gguf.GGUFReader(str(tmp_path / "run" / export["file"]))
    assert reader.fields["general.type"].contents() == "adapter"
    assert {t.name for t in reader.tensors} >= {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"}
    assert record["metrics"]["variants"]["gguf lora"]["exact_match"] == export["exact_match"]
    if importlib.util.find_spec("llama_cpp"):  # the adapter file alone runs on the base file the run recorded
        report = tmp_path / "report"
        result = run_kbit("eval", str(tmp_path / "run" / export["file"]), "--limit", "2", "--out", str(report))
        assert result.returncode == 0, result.stderr[-3000:]
        [row] = json.loads((report / "report.json").read_text())["rows"]
        assert row["runtime"] == "llama.cpp" and row["lora"] == str(tmp_path / "run" / export["file"])
        assert row["answer_top1"] is not None, row
    # outside its run, the adapter file given as a model is refused in one line, not loaded as one
    loose = tmp_path / "loose-lora.gguf"
    shutil.copyfile(tmp_path / "run" / export["file"], loose)
    refused = run_kbit("eval", str(loose), "--limit", "2", "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "is a LoRA adapter GGUF, not a model" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()


def _config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


@pytest.mark.slow
def test_a_k_quant_file_trains_and_its_lora_gguf_passes_the_check_in_llama_cpp(tmp_path, tmp_path_factory):
    pytest.importorskip("llama_cpp")  # llama.cpp's own quantizer makes the K-quant file
    from tests.fixtures.kquant import kquant_gguf

    base = kquant_gguf(tmp_path_factory.getbasetemp() / "kquant", "Q4_K_M")
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(base)).tensors if t.name.startswith("blk.")}
    assert {"Q4_K", "Q6_K"} <= types
    record = train_tiny(base, "gguf", tmp_path / "run")
    assert record["merge"]["top1_agreement"] == 1.0 and record["merge"]["max_abs_logit_diff"] < 1e-3, record["merge"]
    (export,) = record["exports"]
    assert export["type"] == "lora" and export["runtime"] == "llama.cpp" and export["nonfinite_positions"] == 0
    assert export["top1_agreement_within_ties"] >= export["gate"]["min_top1"], export
