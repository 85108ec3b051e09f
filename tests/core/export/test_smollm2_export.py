"""Integration: a short real qlora run on the embedded SmolLM2, its hub-ready folders, then a checked q8_0 GGUF."""

from __future__ import annotations

import json

import pytest
import yaml
from gguf import GGUFReader

from kbit.core.runs.record import read_metadata
from kbit.core.model.sources import default_gguf_path
from tests.conftest import run_kbit

pytestmark = pytest.mark.slow
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_default_run_is_hub_ready_and_exports_a_checked_q8_0_gguf(smollm2_run):
    run, _ = smollm2_run
    record = read_metadata(run)
    assert record["base_model"]["hub_id"] == HUB_ID and record["base_model"]["license"] == "apache-2.0"
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    for folder, relation in (("adapter", "adapter"), ("merged", "merge")):
        front = yaml.safe_load((run / folder / "README.md").read_text().split("---\n")[1])
        assert front["base_model"] == HUB_ID and front["base_model_relation"] == relation and front["license"] == "apache-2.0"

    exported = run_kbit("export", str(run), "--type", "q8_0")
    assert exported.returncode == 0, exported.stderr[-3000:]
    [entry] = read_metadata(run)["exports"]
    assert entry["tokenizer"] == "carried over from SmolLM2-135M-Instruct.Q4_1.gguf"
    assert entry["tensor_types"] == {"F32": 61, "Q8_0": 211} and entry["fallbacks"] == []
    assert entry["top1_agreement"] >= 0.99 and entry["items"] == 20
    assert entry["source"]["exact_match"] - entry["exact_match"] <= 0.02
    reader = GGUFReader(str(run / entry["file"]))
    base = GGUFReader(str(default_gguf_path()))
    assert reader.fields["general.base_model.0.repo_url"].contents() == f"https://huggingface.co/{HUB_ID}"
    for key in ("tokenizer.ggml.pre", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id"):
        assert reader.fields[key].contents() == base.fields[key].contents(), key
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(base.fields["tokenizer.ggml.tokens"].data)
    card = yaml.safe_load((run / "gguf" / "README.md").read_text().split("---\n")[1])
    assert card["base_model"] == HUB_ID and card["library_name"] == "gguf"


def test_the_unfine_tuned_default_base_exports_at_q8_0_and_one_damaged_tensor_is_refused(tmp_path):
    # An honest q8_0 of the base flips a few near-tied answer tokens; the gate is on KL and exact match.
    from gguf import GGUFReader

    from kbit.core.data import load_task_data
    from kbit.core.errors import FidelityError
    from kbit.core.export.check import Gate, check_gguf
    from kbit.core.model.sources import resolve_model

    out = tmp_path / "base-q8_0.gguf"
    exported = run_kbit("export", "default", "--type", "q8_0", "--output", str(out), "--limit", "30", "--json")
    assert exported.returncode == 0, exported.stderr[-3000:]
    entry = json.loads(exported.stdout)
    assert entry["answer_kl"] <= entry["gate"]["max_kl"] and entry["gate"]["min_top1"] is None
    # One tensor of the file written as zeros (a block scale of 0 in every Q8_0 block): refused.
    reader = GGUFReader(str(out), "r+")
    [tensor] = [t for t in reader.tensors if t.name == "blk.15.attn_output.weight"]
    tensor.data[...] = 0
    reader.data.flush()
    del reader
    items = list(load_task_data("arith").held_out[:30])
    with pytest.raises(FidelityError, match=r"mean KL divergence .* \(--max-kl\)"):
        check_gguf(out, resolve_model(None).path, "arithmetic", items, Gate.for_type("q8_0"),
                   source_exact_match=entry["source"]["exact_match"])
