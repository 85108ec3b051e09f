"""Model cards and the adapter's base reference, from a run record (no model needed)."""

from __future__ import annotations

import json

import yaml

from kbit.core.runs.cards import artifact_card, base_model_id, name_base_in_adapter, run_card, write_cards
from kbit.core.runs.record import RunRecord

RAW = {
    "name": "SmolLM2-135M-Instruct-arith_SFT_LoRa64_QLORA_w4_headfp32",
    "base_model": {"name": "SmolLM2-135M-Instruct", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                   "license": "apache-2.0", "origin": "default", "path": "/cache/x"},
    "dataset": {"name": "squad", "source": "hub:rajpurkar/squad"},
    "spec": {"method": "qlora", "weights_bits": 4, "extras": {"adapter": {"peft_type": "lora", "r": 64, "lora_alpha": 16}}},
    "merge": {"action": "merge", "base": "dequantized", "dtype": "float32", "max_abs_logit_diff": 1e-4},
    "metrics": {"exact_match_before": 0.0, "exact_match_after": 0.89},
    "train": {"steps": 100},
}
RECORD = RunRecord.from_dict(RAW)


def _front(text):
    return yaml.safe_load(text.split("---\n")[1])


def test_each_folder_card_names_the_hub_base_and_its_relation():
    for folder, relation, library in (("adapter", "adapter", "peft"), ("merged", "merge", "transformers"),
                                      ("quantized", "quantized", "transformers"), ("gguf", "quantized", "gguf")):
        front = _front(artifact_card(RECORD, folder))
        assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert (front["base_model_relation"], front["library_name"]) == (relation, library)
        assert front["license"] == "apache-2.0" and front["datasets"] == ["rajpurkar/squad"]
        assert front["pipeline_tag"] == "text-generation" and "qlora" in front["tags"]


def test_an_adapter_of_a_quantized_base_says_which_base_computes_the_fine_tune():
    assert "as kbit's `qlora` method quantizes it (4-bit)" in artifact_card(RECORD, "adapter")
    float_base = RunRecord.from_dict({**RAW, "spec": {**RAW["spec"], "method": "lora", "weights_bits": 16}})
    assert "method quantizes it" not in artifact_card(float_base, "adapter")


def test_a_bit_width_tags_the_folder_whose_weights_have_it():
    record = RunRecord.from_dict({**RAW, "quantize": {"method": "gptq", "format": "pack-quantized",
                                                      "spec": {"method": "gptq", "weights_bits": 8}}})
    tags = {folder: _front(artifact_card(record, folder))["tags"] for folder in ("adapter", "merged", "quantized", "gguf")}
    assert "4-bit" in tags["adapter"]  # trained on the NF4 base
    assert "8-bit" in tags["quantized"] and "4-bit" not in tags["quantized"]
    assert not [t for t in tags["merged"] + tags["gguf"] if t.endswith("-bit")]


def test_model_index_holds_only_what_kbit_measured():
    adapter = _front(artifact_card(RECORD, "adapter"))
    [result] = adapter["model-index"][0]["results"]
    assert result["metrics"][0]["value"] == 0.89 and result["dataset"]["name"] == "squad (held-out)"
    assert "model-index" not in _front(artifact_card(RECORD, "merged"))  # nothing measured on the merged model yet
    exported = RunRecord.from_dict({**RAW, "exports": [{"file": "gguf/x-q8_0.gguf", "type": "q8_0", "exact_match": 0.88, "size_bytes": 2**20,
                                       "top1_agreement": 0.999, "max_abs_logit_diff": 0.3, "mean_abs_logit_diff": 0.01,
                                       "source": {"model": "merged", "exact_match": 0.89}}]})
    merged = _front(artifact_card(exported, "merged"))
    assert merged["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.89
    gguf = artifact_card(exported, "gguf")
    assert _front(gguf)["model-index"][0]["results"][0]["metrics"][0]["name"] == "held-out exact match (x-q8_0.gguf)"
    assert "| `x-q8_0.gguf` | q8_0 | 1.0 MiB | transformers | 99.90% |" in gguf


def test_the_gguf_card_describes_the_files_in_its_folder_and_where_each_was_checked():
    inside = {"file": "gguf/x-q8_0.gguf", "type": "q8_0", "exact_match": 0.88, "runtime": "llama.cpp",
              "source": {"model": "merged", "exact_match": 0.89}, "answer_kl": 0.0012, "kl": 0.0034}
    elsewhere = {**inside, "file": "/srv/models/copy.gguf", "exact_match": 0.5}  # exported with --output outside the run
    gguf = artifact_card(RunRecord.from_dict({**RAW, "exports": [inside, elsewhere]}), "gguf")
    [result] = _front(gguf)["model-index"][0]["results"]
    assert [m["value"] for m in result["metrics"]] == [0.88]
    assert "| `x-q8_0.gguf` | q8_0 | 0.0 MiB | llama.cpp |" in gguf and "copy.gguf" not in gguf
    assert "| 0.0012 / 0.0034 |" in gguf  # the check's mean KL, as deploy.md says the card holds it
    assert "--lora" not in gguf


def test_a_local_base_is_named_without_a_dead_link():
    local = RunRecord.from_dict({**RAW, "base_model": {"name": "tiny", "path": "/models/tiny", "origin": "local"}})
    card = artifact_card(local, "adapter")
    assert "a supervised fine-tune of `" in card and "](#)" not in card
    assert "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)" in artifact_card(RECORD, "adapter")


def test_the_gguf_card_runs_an_adapter_file_on_its_base():
    adapter = {"file": "gguf/x-lora.gguf", "type": "lora", "exact_match": 0.6, "items": 10, "runtime": "llama.cpp",
               "base_file": "/models/base-q8_0.gguf", "source": {"model": "adapter", "exact_match": 0.5}}
    gguf = artifact_card(RunRecord.from_dict({**RAW, "exports": [adapter]}), "gguf")
    assert "| 50% → 60% (10) |" in gguf and "the trained adapter" in gguf
    assert "llama-cli -m base-q8_0.gguf --lora x-lora.gguf -cnv" in gguf and "ADAPTER ./x-lora.gguf" in gguf


def test_base_falls_back_to_its_name_without_a_hub_id():
    record = RunRecord.from_dict({**RAW, "base_model": {"name": "tiny", "origin": "local", "path": "/nowhere"}})
    assert base_model_id(record) == "tiny"
    front = _front(artifact_card(record, "adapter"))
    assert front["base_model"] == "tiny" and "license" not in front


def test_write_cards_covers_present_folders_and_points_the_adapter_at_the_hub(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/root/.cache/kbit/x"}))
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    (tmp_path / "gguf").mkdir()  # empty: no card
    written = write_cards(tmp_path, RECORD)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == ["README.md", "adapter/README.md", "merged/README.md"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not list(tmp_path.glob("**/.*tmp-*"))
    run_card = (tmp_path / "README.md").read_text()
    assert _front(run_card)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "| `merged/` |" in run_card


def test_name_base_in_adapter_leaves_other_keys(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/x", "r": 8}))
    name_base_in_adapter(tmp_path, "org/base")
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == {"base_model_name_or_path": "org/base", "r": 8}


def test_each_card_scores_its_own_model_and_the_run_card_every_variant():
    scored = RunRecord.from_dict({**RAW, "metrics": {
        "after": {"exact_match": 0.9, "items": 100},
        "variants": {"adapter": {"exact_match": 0.9, "items": 100, "model": "the trained adapter"},
                     "merged": {"exact_match": 0.87, "items": 100, "model": "merged/ as saved"}}}})
    [merged] = _front(artifact_card(scored, "merged"))["model-index"][0]["results"][0]["metrics"]
    assert (merged["name"], merged["value"]) == ("held-out exact match (merged)", 0.87)  # not the adapter's 90%
    values = {m["name"]: m["value"] for m in _front(run_card(scored, ["adapter", "merged"]))["model-index"][0]["results"][0]["metrics"]}
    assert values == {"held-out exact match (adapter)": 0.9, "held-out exact match (merged)": 0.87}


def test_an_adapter_card_loads_its_base_quantized_as_the_method_does():
    from kbit.core.methods.registry import get_method

    spec = get_method("qlora").resolve_spec({}).to_dict()  # a run records its method's whole spec
    card = artifact_card(RunRecord.from_dict({**RAW, "spec": spec}), "adapter")
    code = card.split("BitsAndBytesConfig(", 1)[1].split("))", 1)[0]
    assert "load_in_4bit=True" in code and "bnb_4bit_quant_type='nf4'" in code
    dtype = spec["training"]["compute_dtype"]
    assert f'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=torch.{dtype},  # as trained' in card
    kbit_quantized = RunRecord.from_dict({**RAW, "spec": get_method("qat").resolve_spec({}).to_dict()})
    assert "quantization_config" not in artifact_card(kbit_quantized, "adapter")  # kbit rounds qat's base itself


def test_a_base_from_a_gguf_file_is_named_as_the_weights_trained_on(tmp_path):
    (tmp_path / "kbit-source.json").write_text(json.dumps({"hub_id": "org/base", "gguf": "/models/base.Q4_1.gguf"}))
    record = RunRecord.from_dict({**RAW, "base_model": {"name": "base", "origin": "local", "path": str(tmp_path)}})
    for folder in ("adapter", "merged"):
        assert "trained on is the GGUF file `base.Q4_1.gguf`, not `org/base`'s own weights" in artifact_card(record, folder)
    assert "GGUF file" not in artifact_card(RECORD, "adapter")
    (tmp_path / "kbit-source.json").write_text(json.dumps({"gguf": "/models/base.Q4_1.gguf"}))
    assert "GGUF file" not in artifact_card(record, "adapter")  # no hub id: the card names the file's model itself


def test_a_score_says_how_many_items_it_is_of_and_rslora_its_scale():
    record = RunRecord.from_dict({**RAW, "metrics": {"after": {"exact_match": 0.3, "items": 30}}})
    assert "| held-out exact match (adapter) | 30.0% of 30 items |" in artifact_card(record, "adapter")
    spec = {**RAW["spec"], "adapter": {"peft_type": "lora", "r": 64, "lora_alpha": 16, "use_rslora": True}}
    assert "| adapter | lora r=64 alpha=16 (rsLoRA: scale alpha / sqrt(r)) |" in \
        artifact_card(RunRecord.from_dict({**RAW, "spec": spec}), "adapter")


def test_names_from_files_and_gguf_metadata_stay_text(tmp_path):
    """A GGUF file's metadata and the user's file names are anyone's text: a hub id that is none is not used, and no
    name leaves its code span, its table cell or the comment of a line of code people copy."""
    (tmp_path / "kbit-source.json").write_text(json.dumps({
        "hub_id": "Org\"; import os; os.system('x')  #\n/evil", "license": "mit\n---\n<img src=x>",
        "gguf": "/models/base.gguf"}))
    adapter = {"file": "gguf/x-lora.gguf", "type": "lora", "exact_match": 0.6, "items": 10,
               "base_file": "/models/b$(touch pwned).gguf", "source": {"model": "adapter", "exact_match": 0.5}}
    record = RunRecord.from_dict({**RAW, "exports": [adapter],
                                  "base_model": {"name": "base\nimport os", "origin": "gguf", "path": str(tmp_path)},
                                  "dataset": {"name": "d` <img src=x onerror=alert(1)> |x|\n## H.jsonl"}})
    for folder in ("adapter", "merged", "gguf"):
        card = artifact_card(record, folder)
        front = _front(card)
        assert front["base_model"] == "base import os" and "license" not in front
        assert "os.system" not in card and "\n## H" not in card and "\nimport os" not in card
        assert "on `d' <img src=x onerror=alert(1)> \\|x\\| ## H.jsonl` with kbit's" in card
    assert "llama-cli -m 'b$(touch pwned).gguf' --lora x-lora.gguf -cnv" in artifact_card(record, "gguf")
    named = RunRecord.from_dict({**RAW, "name": "n`x`[a](javascript&#58;alert(1)) ![i](http&#58;x.y)"})
    assert "# n\\`x\\`\\[a\\](javascript&amp;#58;alert(1)) !\\[i\\](http&amp;#58;x.y) — merged" in artifact_card(named, "merged")


def test_a_hub_id_without_an_organisation_is_one_and_a_name_is_never_a_link(tmp_path):
    record = RunRecord.from_dict({**RAW, "base_model": {"name": "gpt2", "hub_id": "gpt2", "path": "/cache/gpt2"}})
    assert base_model_id(record) == "gpt2" and "[`gpt2`](https://huggingface.co/gpt2)" in artifact_card(record, "merged")
    write_cards_adapter = tmp_path / "run" / "adapter"
    write_cards_adapter.mkdir(parents=True)
    (write_cards_adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/cache/gpt2"}))
    write_cards(tmp_path / "run", record)
    assert json.loads((write_cards_adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "gpt2"
    crafted = RunRecord.from_dict({**RAW, "base_model": {"name": "a/b) ![x](http:evil.example", "path": "/x"}})
    assert "](http:evil.example)" not in artifact_card(crafted, "merged")
