"""``kbit export`` through the real CLI on a trained tiny run: written, checked, recorded, refused."""

from __future__ import annotations

import importlib.util
import json

from pathlib import Path

import pytest
import yaml

from kbit.core.runs.record import read_metadata
from tests.conftest import run_kbit


def _front_matter(path):
    text = path.read_text()
    assert text.startswith("---\n"), text[:80]
    return yaml.safe_load(text.split("---\n")[1])


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.is_dir() else []


@pytest.fixture(scope="module")
def f16_export(tiny_run):
    result = run_kbit("export", str(tiny_run), "--type", "f16")
    assert result.returncode == 0, result.stderr[-3000:]
    return tiny_run, result


@pytest.mark.slow
def test_export_writes_checks_and_records_the_file(f16_export):
    run, result = f16_export
    record = read_metadata(run)
    [entry] = record["exports"]
    target = run / entry["file"]
    assert entry["file"] == f"gguf/{record['name']}-f16.gguf" and target.is_file()
    assert entry["type"] == "f16" and entry["size_bytes"] == target.stat().st_size
    assert entry["top1_agreement"] >= 0.99 and entry["max_abs_logit_diff"] < 0.05 and entry["items"] == 6
    assert entry["source"]["model"] == "merged" and 0 <= entry["exact_match"] <= 1
    assert entry["gate"] == {"max_kl": 0.03, "max_em_drop": 0.02, "min_top1": None, "max_kl_all": 0.03}
    assert record["artifacts"]["gguf"] == "gguf" and _leftovers(run / "gguf") == []
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"wrote    {target}") and "F16 ×" in lines[0]
    assert "top-1 agreement" in result.stdout and "held-out exact match" in result.stdout and "passed the f16 gate" in result.stdout


@pytest.mark.slow
def test_every_artifact_folder_gets_a_hub_card(f16_export):
    run, _ = f16_export
    record = read_metadata(run)
    expected = {"adapter": ("adapter", "peft"), "merged": ("merge", "transformers"), "gguf": ("quantized", "gguf")}
    for folder, (relation, library) in expected.items():
        front = _front_matter(run / folder / "README.md")
        # no hub id is known for a local base: its folder's name
        assert front["base_model"] == record["base_model"]["name"] == Path(record["base_model"]["path"]).name
        assert front["base_model_relation"] == relation and front["library_name"] == library, folder
        assert front["pipeline_tag"] == "text-generation"
    gguf_card = _front_matter(run / "gguf" / "README.md")
    assert gguf_card["model-index"][0]["results"][0]["metrics"][0]["type"] == "exact_match"
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    # the adapter loads on its own (AutoPeftModelForCausalLM): the local folder it trained on
    assert adapter_config["base_model_name_or_path"] == record["base_model"]["path"]


@pytest.mark.slow
def test_exporting_again_replaces_the_commands_own_file(f16_export):
    run, _ = f16_export
    result = run_kbit("export", str(run), "--type", "f16", "--limit", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported before: written and checked again" in result.stderr  # said, not done silently
    [entry] = read_metadata(run)["exports"]
    assert entry["items"] == 2


@pytest.mark.slow
def test_a_file_the_command_did_not_write_is_never_replaced_in_a_run(f16_export, tmp_path):
    run, _ = f16_export
    record = read_metadata(run)
    foreign = run / "gguf" / f"{record['name']}-q8_0.gguf"
    foreign.write_bytes(b"not ours")
    for extra in ((), ("--overwrite",)):
        result = run_kbit("export", str(run), "--type", "q8_0", *extra)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "lies inside the kbit run" in result.stderr and "never the GGUF export of another command" in result.stderr
        assert foreign.read_bytes() == b"not ours"
    foreign.unlink()
    # Outside kbit's outputs, an existing file is replaced with --overwrite only.
    outside = tmp_path / "mine.gguf"
    outside.write_bytes(b"mine")
    refused = run_kbit("export", str(run), "--type", "q8_0", "--output", str(outside))
    assert refused.returncode == 2 and "pass --overwrite to replace it" in refused.stderr and outside.read_bytes() == b"mine"
    replaced = run_kbit("export", str(run), "--type", "q8_0", "--output", str(outside), "--overwrite", "--limit", "2")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert outside.read_bytes()[:4] == b"GGUF"
    assert {e["file"] for e in read_metadata(run)["exports"]} == {f"gguf/{record['name']}-f16.gguf", str(outside.resolve())}


@pytest.mark.slow
def test_another_commands_output_is_never_written_into(f16_export):
    run, _ = f16_export
    for target in (run / "merged" / "x.gguf", run / "x.gguf"):
        result = run_kbit("export", str(run), "--output", str(target), "--overwrite")
        assert result.returncode == 2 and "which another kbit command wrote" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
        assert not target.exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--type", "q3_k"), "unknown --type 'q3_k'; choose from f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1"),
    (("--format", "onnx"), "unknown --format 'onnx'; kbit exports gguf"),
    (("--min-top1", "95"), "--min-top1 95.0 is outside [0, 1]"),
    (("--output", "x.bin"), "must end in .gguf"),
])
def test_bad_options_are_one_line_errors(f16_export, args, message):
    run, _ = f16_export
    result = run_kbit("export", str(run), *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_file_outside_its_gate_fails_loudly_and_is_not_kept(tiny, tmp_path):
    # A tokenizer normaliser the GGUF vocabulary cannot carry: the file would tokenize "What" differently.
    import shutil

    model = tmp_path / "lowercasing"
    shutil.copytree(tiny, model)
    spec = json.loads((model / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (model / "tokenizer.json").write_text(json.dumps(spec))
    out = tmp_path / "out" / "new" / "folders" / "lowercasing.gguf"  # the export creates new/folders/
    (tmp_path / "out").mkdir()
    result = run_kbit("export", str(model), "--output", str(out), "--limit", "4")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr[-2000:]
    assert last.startswith("kbit: error: the GGUF's tokenizer encodes 4 of 4 held-out items differently")
    assert last.endswith("the file was not kept") and list((tmp_path / "out").iterdir()) == []  # nor its folders


@pytest.mark.slow
def test_kbit_eval_scores_the_exported_file_itself(f16_export, tmp_path):
    run, _ = f16_export
    target = run / read_metadata(run)["exports"][0]["file"]
    report = tmp_path / "report"
    result = run_kbit("eval", str(target), "--limit", "3", "--max-new-tokens", "4", "--out", str(report), "--json",
                      env={"KBIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    [row] = json.loads((report / "report.json").read_text())["rows"]
    in_llama_cpp = importlib.util.find_spec("llama_cpp") is not None  # kbit eval's runtime auto
    assert row["variant"] == ("gguf@llama.cpp" if in_llama_cpp else "base") and row["model"] == target.stem.split(".")[0]
    converted = list((tmp_path / "cache" / "models").glob(f"{target.stem}-*"))
    if in_llama_cpp:  # the run's own file: its tokenizer and config are the run's merged model's, no conversion
        assert converted == [] and row["path"] == str(target)
    else:  # transformers' GGUF reader runs the file: converted once, into the cache
        assert len(converted) == 1 and (converted[0] / "kbit-source.json").is_file()


def test_a_model_that_is_not_a_run_needs_an_output(tiny, tmp_path):
    result = run_kbit("export", str(tiny))
    assert result.returncode == 2 and "pass --output FILE.gguf" in result.stderr
    out = tmp_path / "tiny-q8_0.gguf"
    result = run_kbit("export", str(tiny), "--output", str(out), "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["output"] == str(out) and out.is_file()


@pytest.mark.slow
def test_a_run_whose_merged_folder_is_damaged_says_so(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "kbit.json").write_text((tiny_run / "kbit.json").read_text())
    (run / "merged").write_text("not a folder")
    assert read_metadata(run)["artifacts"].get("merged")
    result = run_kbit("export", str(run), "--type", "q8_0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"recorded a merged model, but {run / 'merged'} is missing or damaged" in result.stderr


@pytest.mark.slow
def test_an_export_whose_record_cannot_be_written_leaves_no_file_and_can_be_run_again(tiny_run, tmp_path, monkeypatch):
    import errno
    import shutil

    import kbit.core.export.pipeline as pipeline

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("gguf"))

    def full_disk(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:  # the record is the last thing written: a full disk, a read-only kbit.json
        patched.setattr(pipeline, "write_record", full_disk)
        with pytest.raises(Exception, match="No space left"):
            pipeline.export_path(str(run), file_type="q8_0", limit=3)
    assert not list(run.glob("gguf/*.gguf")) and not _leftovers(run / "gguf")
    result = pipeline.export_path(str(run), file_type="q8_0", limit=3)  # nothing unrecorded stands in its way
    assert result.target.is_file() and str(result.target.relative_to(run)) in [e["file"] for e in read_metadata(run)["exports"]]


@pytest.mark.slow
def test_a_run_that_cannot_be_written_points_at_exporting_its_merged_model(tiny_run, tmp_path, monkeypatch):
    import os

    from kbit.core.errors import ConfigError
    from kbit.core.export.pipeline import export_path

    # root writes through permission bits, so the read-only mount is what os.access reports there
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK and Path(path) == tiny_run))
    with pytest.raises(ConfigError, match=f"run {tiny_run} cannot be written.*kbit export {tiny_run / 'merged'} --output"):
        export_path(str(tiny_run), file_type="q8_0", output=str(tmp_path / "x.gguf"))
    assert not (tmp_path / "x.gguf").exists()
