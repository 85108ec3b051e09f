"""``kbit eval FILE.gguf``: the file run in llama.cpp or read by transformers, compared with a reference."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from kbit.core.cli import main
from tests.core.evaluate.test_cli import _fails

ARGS = ("--limit", "4", "--max-new-tokens", "4", "--json")


@pytest.fixture(scope="module")
def tiny_gguf(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kbit.core.export.gguf import BaseModel, write_gguf

    target = tmp_path_factory.mktemp("gguf-eval") / "tiny-f16.gguf"
    write_gguf(tiny, target, "f16", name="tiny", base=BaseModel(name="tiny"))
    return target


def _eval(capsys, *args: str) -> dict:
    main(["eval", *args, *ARGS])
    return json.loads(capsys.readouterr().out)


def test_a_gguf_in_llama_cpp_and_in_transformers_against_its_source(tiny_gguf, tiny, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    report = _eval(capsys, str(tiny_gguf), "--runtime", "llama.cpp", "--reference", str(tiny), "--out", str(tmp_path / "l"))
    (row,) = report["rows"]
    assert (row["runtime"], row["variant"], row["path"]) == ("llama.cpp", "gguf@llama.cpp", str(tiny_gguf))
    assert row["items"] == 4 and 0 <= row["exact_match"] <= 1 and row["answers_cut"] <= 4
    assert row["prompt_tokens_per_s"] > 0 and row["generation_tokens_per_s"] > 0
    # F16 weights against their float32 source: rounding 2^-11; the tiny model's logits are near-uniform
    assert row["answer_top1"] >= 0.9 and row["same_top_p"] >= 0.9 and row["kl"] < 1e-4 and row["nonfinite_positions"] == 0
    assert row["answer_positions"] > 0 and row["positions"] > row["answer_positions"] and str(tiny) in row["reference"]
    markdown = (tmp_path / "l" / "report.md").read_text()
    assert "computed in llama.cpp (llama-cpp-python 0.3" in markdown and "answer top-1" in markdown

    (same,) = _eval(capsys, str(tiny_gguf), "--runtime", "transformers", "--reference", str(tiny),
                    "--out", str(tmp_path / "t"))["rows"]
    assert (same["runtime"], same["variant"]) == ("transformers", "base")
    assert same["loss_tokens"] == row["loss_tokens"] and abs(same["loss"] - row["loss"]) < 1e-3  # one file, two runtimes
    assert same["answer_top1"] >= 0.9 and same["kl"] < 1e-4 and "prompt_tokens_per_s" not in same
    assert same["memory_bytes"] is None  # the float copy's would not be the file's
    assert same["bits_per_weight"] == row["bits_per_weight"] == 16  # the file's, as stored
    assert same["disk_bytes"] == row["disk_bytes"] == tiny_gguf.stat().st_size  # the file's, not the float copy's


@pytest.mark.slow  # tiny_run trains in a subprocess
def test_a_file_in_a_run_gguf_folder_is_compared_with_the_run_adapter_model(tiny_run, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from kbit.core.export.gguf import BaseModel, write_gguf

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "gguf").mkdir()
    write_gguf(run / "merged", run / "gguf" / "run-f16.gguf", "f16", name="run", base=BaseModel(name="tiny"))
    (row,) = _eval(capsys, str(run / "gguf" / "run-f16.gguf"), "--out", str(tmp_path / "r"))["rows"]  # auto: llama.cpp
    assert row["runtime"] == "llama.cpp" and row["dataset"] == "arith"
    assert f"adapter ({run / 'adapter'})" in row["reference"]
    assert row["answer_top1"] >= 0.9 and row["kl"] < 1e-3  # the merged model in F16 against the adapter on its base
    assert row["disk_bytes"] == (run / "gguf" / "run-f16.gguf").stat().st_size

    record = json.loads((run / "kbit.json").read_text())  # as kbit export records the file in the run
    record["exports"] = [{"file": "gguf/run-f16.gguf", "format": "gguf", "type": "f16"}]
    (run / "kbit.json").write_text(json.dumps(record))
    rows = _eval(capsys, str(run), "--out", str(tmp_path / "all"))["rows"]  # the run's deploy file is a variant too
    assert [r["variant"] for r in rows] == ["base", "adapter", "merged", "gguf@llama.cpp"]
    assert rows[-1]["loss"] == pytest.approx(row["loss"]) and rows[-1]["bits_per_weight"] == 16


def test_a_reference_the_file_was_not_made_from_is_warned_of(tiny_gguf, kbit_tiny_model_factory, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    other = kbit_tiny_model_factory(seed=7, tied=False)  # the same vocabulary, another output head
    report = _eval(capsys, str(tiny_gguf), "--reference", str(other), "--limit", "4", "--out", str(tmp_path / "r"))
    (row,) = report["rows"]
    assert row["answer_top1"] < 0.5
    assert any("the file computes far from that model" in w and w.endswith("check that --reference names its source")
               for w in report["warnings"])


def test_bad_runtime_options(tiny_gguf, tiny, tmp_path, capsys):
    assert "unknown --runtime 'vllm'" in _fails(["eval", str(tiny_gguf), "--runtime", "vllm"], capsys)
    assert "--lora needs llama.cpp" in _fails(["eval", str(tiny_gguf), "--runtime", "transformers", "--lora", str(tiny_gguf)], capsys)
    assert "nope.gguf does not exist" in _fails(["eval", str(tiny_gguf), "--lora", str(tmp_path / "nope.gguf")], capsys)
    # llama.cpp would load a model file as an adapter and crash the process
    assert "is a GGUF model file, not a LoRA adapter" in _fails(["eval", str(tiny_gguf), "--lora", str(tiny_gguf)], capsys)
    (tmp_path / "text.gguf").write_text("not gguf")
    assert "cannot be read as GGUF" in _fails(["eval", str(tiny_gguf), "--lora", str(tmp_path / "text.gguf")], capsys)
    assert "--lora applies to a base .gguf" in _fails(["eval", str(tiny), "--lora", str(tiny_gguf)], capsys)
    assert "--reference applies to .gguf files" in _fails(["eval", str(tiny), "--reference", str(tiny)], capsys)


def test_a_lora_gguf_made_for_another_base_is_refused_before_llama_cpp_loads_it(tiny_gguf, tmp_path, capsys):
    import gguf
    import numpy as np

    pytest.importorskip("llama_cpp")  # which would crash the process on this pair
    lora = tmp_path / "other-lora.gguf"
    writer = gguf.GGUFWriter(str(lora), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 576), dtype=np.float32))  # a 576-wide model's
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((576, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    error = _fails(["eval", str(tiny_gguf), "--lora", str(lora)], capsys)
    assert "adapts blk.0.attn_q.weight as a (576, 576) weight but" in error and "the adapter was made for" in error


def test_llama_cpp_asked_for_without_the_package_names_the_install_line(tiny_gguf, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without it looks like to find_spec
    for option in (["--runtime", "llama.cpp"], ["--lora", str(tiny_gguf)]):
        assert "pip install 'kbit[llama-cpp]'" in _fails(["eval", str(tiny_gguf), *option], capsys)


@pytest.mark.slow  # tiny_run trains in a subprocess
def test_a_lora_gguf_is_applied_in_llama_cpp_and_compared_with_its_run_adapter(tiny_run, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    import torch
    from safetensors.torch import load_file, save_file

    from kbit.core.export.gguf import BaseModel, write_gguf
    from kbit.core.export.lora_gguf import write_lora_gguf

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(0)
    # two training steps leave lora_B near zero; a strong adapter shows whether llama.cpp applies it
    save_file({k: torch.randn(v.shape, generator=generator) * 0.3 if "lora_B" in k else v for k, v in tensors.items()}, weights)
    base_dir = json.loads((run / "kbit.json").read_text())["base_model"]["path"]
    (run / "gguf").mkdir()
    base, lora = run / "gguf" / "base-f16.gguf", run / "gguf" / "run-lora.gguf"
    write_gguf(Path(base_dir), base, "f16", name="tiny", base=BaseModel(name="tiny"))
    write_lora_gguf(run / "adapter", base, lora, name="run")
    (with_lora,) = _eval(capsys, str(base), "--lora", str(lora), "--out", str(tmp_path / "with"))["rows"]
    (without,) = _eval(capsys, str(base), "--out", str(tmp_path / "without"))["rows"]
    assert (with_lora["variant"], with_lora["lora"], with_lora["model"]) == ("gguf+lora@llama.cpp", str(lora), "run-lora")
    assert f"adapter ({run / 'adapter'})" in with_lora["reference"] and f"adapter ({run / 'adapter'})" in without["reference"]
    # the reference is the adapter on its NF4 (qlora) base; the file's base is F16: near-ties of the tiny
    # model flip (measured: KL 9e-5, answer top-1 81% with the adapter; KL 0.038, top-1 0% without)
    assert with_lora["kl"] < 1e-3 and with_lora["answer_top1"] >= without["answer_top1"] + 0.5
    assert without["kl"] > 100 * with_lora["kl"]  # the base alone is far from the trained model
