"""The quantized-base cache as a plugin author meets it: ``quantize_base`` runs once per base, method,
plugin source and spec; the base loaded again from the cache is the same model, bit for bit.

The method is ``rtn-cached`` (tests/fixtures/plugins/kbit_rtn.py), a third-party plugin that counts its
own ``quantize_base`` calls; every test has its own ``KBIT_CACHE``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys

import pytest

from kbit.core.model.bases import load_base
from kbit.core.system.device import DeviceInfo
from kbit.core.methods.registry import Registry
from tests.conftest import run_kbit

MODULES = ("kbit_rtn", "kbit_rtn_layers")


@pytest.fixture
def site(plugin_site, tmp_path, monkeypatch):
    for module in MODULES:  # a fresh plugin per test: its call counts start at 0
        sys.modules.pop(module, None)
    plugin_site.add("kbit-rtn", "1.0", {"rtn-cached": "kbit_rtn:cached", "rtn-counted-local": "kbit_rtn:counted_local",
                                        "rtn-touches-norms": "kbit_rtn:touches_norms"}, modules=MODULES)
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KBIT_NO_QUANTIZED_CACHE", raising=False)
    yield plugin_site
    for module in MODULES:
        sys.modules.pop(module, None)


@pytest.fixture
def registry(site):
    return Registry(entry_points=site.entry_points(), environ={})


def _load(registry, name, model, **options):
    method = registry.get(name)
    spec = method.resolve_spec({"r": "4", **options}, DeviceInfo.cpu())
    return load_base(method, spec, str(model))


def _calls(registry, name):
    return registry.get(name).plugin.calls


def _logits(model):
    import torch

    with torch.no_grad():
        return model(torch.arange(1, 17).reshape(2, 8)).logits


def _entries(tmp_path):
    folder = tmp_path / "cache" / "quantized"
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def test_a_second_load_rebuilds_the_quantized_layers_without_quantizing(registry, kbit_tiny_model, tmp_path):
    import torch
    from kbit_rtn_layers import RoundToNearestLinear

    first = _load(registry, "rtn-cached", kbit_tiny_model)
    second = _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 1 and len(_entries(tmp_path)) == 1
    assert first.state_dict().keys() == second.state_dict().keys()
    for name, tensor in first.state_dict().items():
        again = second.state_dict()[name]
        assert again.dtype == tensor.dtype and torch.equal(again, tensor), name
    assert torch.equal(_logits(first), _logits(second))
    layer, quantized = (model.get_submodule("model.layers.0.self_attn.q_proj") for model in (second, first))
    assert type(layer) is RoundToNearestLinear and layer.groups == (64, 2, 32) and layer.compute_dtype is torch.float32
    assert layer.training == quantized.training and layer.bias is None


def test_another_option_base_or_plugin_source_quantizes_again(registry, kbit_tiny_model, site, tmp_path):
    from safetensors.torch import load_file, save_file

    _load(registry, "rtn-cached", kbit_tiny_model)
    _load(registry, "rtn-cached", kbit_tiny_model, bits="3")
    assert _calls(registry, "rtn-cached") == 2
    changed = tmp_path / "changed"
    shutil.copytree(kbit_tiny_model, changed)
    weights = load_file(changed / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"][0, 0] += 0.5
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    _load(registry, "rtn-cached", changed)
    assert _calls(registry, "rtn-cached") == 3
    with open(site.root / "kbit_rtn_layers.py", "a", encoding="utf-8") as layers:
        layers.write("# edited\n")
    _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 4
    _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 4
    assert len(_entries(tmp_path)) == 3  # the default spec, bits=3, the changed base


def test_an_entry_of_edited_plugin_code_replaces_the_one_the_old_code_wrote(registry, kbit_tiny_model, site, tmp_path):
    _load(registry, "rtn-cached", kbit_tiny_model)
    _load(registry, "rtn-cached", kbit_tiny_model, bits="3")
    (before_default, before_bits3) = sorted(_entries(tmp_path), key=lambda p: p.stat().st_mtime_ns)
    with open(site.root / "kbit_rtn.py", "a", encoding="utf-8") as plugin:  # the plugin's module: in every key
        plugin.write("# edited\n")
    _load(registry, "rtn-cached", kbit_tiny_model)
    entries = _entries(tmp_path)
    assert _calls(registry, "rtn-cached") == 3 and len(entries) == 2
    assert before_default not in entries and before_bits3 in entries  # another spec may still be loaded: kept


@pytest.mark.parametrize("damage", ["truncated tensors", "garbage record"])
def test_a_damaged_entry_is_ignored_and_written_again(registry, kbit_tiny_model, tmp_path, caplog, damage):
    import torch

    first = _load(registry, "rtn-cached", kbit_tiny_model)
    (entry,) = _entries(tmp_path)
    if damage == "truncated tensors":
        data = (entry / "layers.safetensors").read_bytes()
        (entry / "layers.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (entry / "kbit-quantized.json").write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="kbit"):
        again = _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 2 and "not used" in caplog.text and "damaged" in caplog.text
    assert torch.equal(_logits(first), _logits(again))
    _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 2  # the entry was written again, whole


def test_what_a_killed_writer_left_is_never_read_and_is_removed(registry, kbit_tiny_model, tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "cache" / "quantized" / ".rtn-cached-killed"
    left.mkdir(parents=True)
    (left / "kbit-staging.json").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    (left / "layers.safetensors").write_bytes(b"half")
    _load(registry, "rtn-cached", kbit_tiny_model)
    _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 1 and not left.exists() and len(_entries(tmp_path)) == 1


def test_an_entry_whose_base_no_longer_matches_is_quantized_again(registry, kbit_tiny_model, tmp_path, caplog):
    _load(registry, "rtn-cached", kbit_tiny_model)
    (entry,) = _entries(tmp_path)
    record = json.loads((entry / "kbit-quantized.json").read_text())
    record["tensors"][0][1] = [1, 1]  # as if the base now loaded with another shape
    (entry / "kbit-quantized.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 2 and "names, shapes and dtypes" in caplog.text
    _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 2


@pytest.mark.parametrize(("name", "reason", "fix"), [
    ("rtn-counted-local", "defined inside a function", "define the QuantizedLinear subclass at module level"),
    ("rtn-touches-norms", "changed model.norm.weight besides the layers it replaced", "only replace layers")])
def test_a_base_kbit_cannot_rebuild_is_quantized_at_every_load(registry, kbit_tiny_model, tmp_path, caplog, name,
                                                               reason, fix):
    import torch

    with caplog.at_level(logging.INFO, logger="kbit"):
        first = _load(registry, name, kbit_tiny_model)
        second = _load(registry, name, kbit_tiny_model)
    assert _calls(registry, name) == 2 and not _entries(tmp_path)
    said = [r.getMessage() for r in caplog.records if "is not cached" in r.getMessage()]
    assert len(said) == 1 and reason in said[0] and fix in said[0]  # said once, with the fix
    assert torch.equal(_logits(first), _logits(second))


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_load(registry, kbit_tiny_model, tmp_path, monkeypatch,
                                                                     caplog):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "not-a-folder"))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        model = _load(registry, "rtn-cached", kbit_tiny_model)
    assert "cannot write the quantized base of method 'rtn-cached'" in caplog.text
    assert _logits(model).isfinite().all()


def test_the_environment_variable_turns_the_cache_off(registry, kbit_tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KBIT_NO_QUANTIZED_CACHE", "1")
    _load(registry, "rtn-cached", kbit_tiny_model)
    _load(registry, "rtn-cached", kbit_tiny_model)
    assert _calls(registry, "rtn-cached") == 2 and not _entries(tmp_path)


@pytest.mark.slow
def test_a_run_trains_on_the_quantized_base_once_and_its_merge_passes_from_the_cache(site, kbit_tiny_model, tmp_path):
    calls, out = tmp_path / "calls.txt", tmp_path / "run"
    env = site.env(KBIT_CACHE=str(tmp_path / "cache"), KBIT_RTN_CALLS=str(calls))
    result = run_kbit("train", "--model", str(kbit_tiny_model), "--method", "rtn-cached", "--output", str(out),
                      "--max-steps", "3", "--batch-size", "2", "-o", "r=4", "--max-examples", "24", "--eval-limit", "0",
                      env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    merge = json.loads((out / "kbit.json").read_text())["merge"]
    assert merge["max_abs_logit_diff"] < 1e-3 and merge["top1_agreement"] == 1.0
    assert calls.read_text().split() == ["rtn-cached"]  # trained on it; the merge reloaded it from the cache
    assert len(_entries(tmp_path)) == 1
