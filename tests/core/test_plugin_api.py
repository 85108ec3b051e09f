"""The plugin contract as a third-party author meets it: the public API, merges into a base the method
quantized itself, and the contract's guarantees enforced by kbit rather than trusted."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_kbit

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ("--max-steps", "3", "--batch-size", "2", "-o", "r=4", "--max-examples", "24", "--eval-limit", "0",
         "--logging-steps", "1")


def _kbit_core_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n == "kbit.core" or n.startswith("kbit.core.")]
    return found


def test_methods_use_only_the_public_plugin_api():
    sources = [*sorted((ROOT / "kbit" / "plugins").glob("*.py")), *sorted((ROOT / "examples").rglob("*.py"))]
    assert sources
    offending = [hit for path in sources for hit in _kbit_core_imports(path)]
    assert not offending, f"method code must import only kbit / kbit.plugin: {offending}"


def test_the_new_method_template_uses_only_the_public_plugin_api(tmp_path):
    from kbit.core.scaffold import write_method

    target = write_method("template-check", tmp_path / "dist")
    sources = sorted(target.rglob("*.py"))
    assert len(sources) == 3
    offending = [hit for path in sources for hit in _kbit_core_imports(path)]
    assert not offending, offending


def test_the_plugin_api_imports_no_torch_and_dir_lists_every_public_name():
    code = ("import sys, kbit.plugin; assert 'torch' not in sys.modules, 'torch imported'\n"
            "missing = set(kbit.plugin.__all__) - set(dir(kbit.plugin)); assert not missing, missing\n"
            "assert 'torch' not in sys.modules, 'dir() imported torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_quantized_linear_is_a_linear_that_peft_trains_and_kbit_measures():
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from kbit.core.measure.metrics import linear_weight_bits, memory_footprint
    from kbit.plugin import QuantizedLinear, dequantize_linears, replace_linears
    from tests.fixtures.plugins.kbit_rtn import GROUP, _layer_class

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    plain = memory_footprint(model)
    layer = _layer_class()
    assert replace_linears(model, lambda name, linear: layer(linear, 4)) == 7  # q k v o gate up down
    assert linear_weight_bits(model)["bits_per_weight"] == pytest.approx(8 + 2 * 32 / GROUP)  # byte codes, fp32 scale+offset
    assert memory_footprint(model) < plain
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear"))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert len(trainable) == 14 and all("lora_" in n for n in trainable)
    expected = {n: m.dequantize() for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    dequantize_linears(model)
    for name, weight in expected.items():
        restored = model.get_submodule(name)
        assert type(restored) is torch.nn.Linear and torch.equal(restored.weight, weight)


@pytest.fixture
def rtn_site(plugin_site):
    plugin_site.add("kbit-rtn", "1.0", {"rtn-exact": "kbit_rtn:exact", "rtn-in-prepare": "kbit_rtn:in_prepare",
                                        "rtn-no-dequantize": "kbit_rtn:no_dequantize",
                                        "rtn-buffers-in-prepare": "kbit_rtn:buffers_in_prepare",
                                        "rtn-scale-off": "kbit_rtn:scale_off",
                                        "rtn-into-original": "kbit_rtn:into_original"}, modules=("kbit_rtn",))
    return plugin_site


@pytest.mark.slow
def test_a_base_quantized_in_quantize_base_merges_into_exactly_what_it_trained_on(rtn_site, kbit_tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(kbit_tiny_model), "--method", "rtn-exact", "--output", str(out), *TRAIN,
                      env=rtn_site.env())
    assert result.returncode == 0, result.stderr[-3000:]
    merge = json.loads((out / "kbit.json").read_text())["merge"]
    assert merge["base_used"].startswith("the dequantized base (method 'rtn-exact': quantize_base, then dequantize_base)")
    assert merge["max_abs_logit_diff"] < 1e-3 and merge["top1_agreement"] == 1.0
    assert "rtn-exact': quantize_base, then dequantize_base" in " ".join(result.stdout.split())


@pytest.mark.slow
def test_a_base_quantized_in_prepare_model_is_refused_before_training(rtn_site, kbit_tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(kbit_tiny_model), "--method", "rtn-in-prepare", "--output", str(out),
                      *TRAIN, env=rtn_site.env())
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(part for part in result.stderr.splitlines() if "kbit: error:" in part)
    assert "method 'rtn-in-prepare' changed base weights in prepare_model" in line and "merge" in line
    assert not out.exists()  # refused before training: nothing is left behind


@pytest.mark.slow
def test_quantized_buffers_changed_in_prepare_model_are_refused_before_training(rtn_site, kbit_tiny_model, tmp_path):
    # the scales moved by 1%: a merge would reload other weights than the adapter trained on
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(kbit_tiny_model), "--method", "rtn-buffers-in-prepare", "--output",
                      str(out), *TRAIN, env=rtn_site.env())
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(part for part in result.stderr.splitlines() if "kbit: error:" in part)
    assert "method 'rtn-buffers-in-prepare' changed base weights in prepare_model (model.layers.0." in line
    assert ".scale" in line and not (out / "adapter").exists()


@pytest.mark.slow
def test_a_dequantize_base_with_scales_5_percent_off_fails_the_run_though_top1_agrees(rtn_site, kbit_tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(kbit_tiny_model), "--method", "rtn-scale-off", "--output", str(out), *TRAIN,
                      env=rtn_site.env())
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [part for part in result.stderr.splitlines() if "kbit: error:" in part]
    assert len(lines) == 1 and "merge check failed" in lines[0] and "method 'rtn-scale-off'" in lines[0]
    assert "of their scale" in lines[0] and "Traceback" not in result.stderr
    record = json.loads((out / "kbit.json").read_text())
    merge = record["merge"]
    assert record["status"] == "failed" and (out / "adapter").is_dir() and not (out / "merged").exists()
    assert merge["max_abs_logit_diff"] > merge["max_error_share"] * max(merge["adapter_effect"], merge["max_abs_logit"])


def test_the_contract_suite_fails_a_wrong_merge_naming_it(rtn_site, kbit_tiny_model, tmp_path, monkeypatch):
    from kbit.core.methods import registry as registry_module
    from kbit.core.methods.registry import Registry
    from kbit.testing import MethodContract

    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=rtn_site.entry_points(), environ={}))

    class Contract(MethodContract):
        method = "rtn-in-prepare"

    suite, method = Contract(), registry_module.get_method("rtn-scale-off")
    spec = method.resolve_spec({"r": "4"}, __import__("kbit.plugin", fromlist=["DeviceInfo"]).DeviceInfo.cpu())
    with pytest.raises(AssertionError, match="merging method 'rtn-scale-off' into the dequantized base .* does not "
                                             "reproduce the adapter model: max \\|Δlogit\\|.*dequantize_base must return"):
        suite.test_merge_reproduces_the_adapter_model(method, spec, kbit_tiny_model, tmp_path / "scale-off")
    # a merge into the unquantized base is held to the trained model, as kbit train's merge check holds it
    method = registry_module.get_method("rtn-into-original")
    spec = method.resolve_spec({"r": "4"}, __import__("kbit.plugin", fromlist=["DeviceInfo"]).DeviceInfo.cpu())
    with pytest.raises(AssertionError, match="does not reproduce the adapter model.*merge_policy names base='original', "
                                             "the unquantized base, but the adapter trained on the quantized one"):
        suite.test_merge_reproduces_the_adapter_model(method, spec, kbit_tiny_model, tmp_path / "into-original")
    # a prepare_model that changes base weights gets kbit train's diagnosis, not a merge failure blamed elsewhere
    from kbit.core.model.bases import MergeRefused

    for name in ("rtn-buffers-in-prepare", "rtn-in-prepare"):
        method = registry_module.get_method(name)
        spec = method.resolve_spec({"r": "4"}, __import__("kbit.plugin", fromlist=["DeviceInfo"]).DeviceInfo.cpu())
        with pytest.raises(MergeRefused, match=f"method '{name}' changed base weights in prepare_model"):
            suite.test_merge_reproduces_the_adapter_model(method, spec, kbit_tiny_model, tmp_path / name)


@pytest.mark.slow
def test_a_merge_no_hook_can_produce_is_refused_before_training(rtn_site, kbit_tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(kbit_tiny_model), "--method", "rtn-no-dequantize", "--output", str(out),
                      *TRAIN, env=rtn_site.env())
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("kbit: error:")]
    assert len(lines) == 1 and "has no dequantize_base hook" in lines[0] and "rtn-no-dequantize" in lines[0]
    assert not out.exists()


def test_kbit_methods_reports_a_wrong_resolve_spec_as_broken(plugin_site, monkeypatch):
    from kbit.core.methods.registry import Registry

    plugin_site.add("kbit-broken", "0.0.3", {"bad": "kbit_broken:wrong_return"}, modules=("kbit_broken",))
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    record = next(r for r in registry.records() if r.name == "bad")
    assert record.status == "broken" and "resolve_spec returned dict, expected kbit.plugin.QuantizationSpec" in record.error


@pytest.mark.slow
def test_new_method_installs_passes_its_tests_and_trains(tmp_path):
    dist, site = tmp_path / "probe", tmp_path / "site"
    assert run_kbit("new-method", "probe-method", "--dir", str(dist)).returncode == 0
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--target", str(site), str(dist)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**__import__("os").environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tests = subprocess.run([sys.executable, "-m", "pytest", str(dist), "-q", "-p", "no:cacheprovider"],
                           capture_output=True, text=True, env=env, cwd=dist, timeout=1800)
    assert tests.returncode == 0, tests.stdout[-3000:]
    listed = {r["name"]: r for r in json.loads(run_kbit("methods", "--json", env=env).stdout)}
    assert listed["probe-method"]["status"] == "ready" and listed["probe-method"]["distribution"] == "kbit-probe-method"
    trained = run_kbit("train", "--method", "probe-method", "--max-steps", "2", "--eval-limit", "2",
                       "--output", str(tmp_path / "run"), env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "kbit.json").read_text())["merge"]["top1_agreement"] >= 0.99


def test_every_hook_is_in_the_guide_and_the_contract_suite():
    from kbit.core.contract import hookspecs
    from kbit.testing.contract import HOOK_TESTS, MethodContract

    specs = sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "kbit_spec"))
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert specs == sorted(HOOK_TESTS), "every hookspec needs a contract test (kbit/testing/contract.py HOOK_TESTS)"
    assert all(hasattr(MethodContract, test) for test in HOOK_TESTS.values())
    missing = [name for name in specs if f"### `{name}`" not in guide]
    assert not missing, f"docs/plugins.md has no section for {missing}"


def _guide_example(site) -> None:
    """The two files of docs/plugins.md's "A complete example", as a package on ``site``."""
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = guide[guide.index("## A complete example"):guide.index("## Where things are in kbit")]
    package = site.root / "kbit_rtn4"
    package.mkdir()
    for name in ("__init__.py", "_layers.py"):
        code = section[section.index("```python\n", section.index(f"`kbit_rtn4/{name}`:")) + 10:]
        (package / name).write_text(code[:code.index("\n```")] + "\n")
    site.add("kbit-rtn4", "0.1", {"rtn4": "kbit_rtn4"})


def test_the_guides_complete_example_passes_the_contract_suite(plugin_site, kbit_tiny_model, tmp_path, monkeypatch):
    from kbit.core.methods import registry as registry_module
    from kbit.core.methods.registry import Registry
    from kbit.plugin import DeviceInfo
    from kbit.testing import MethodContract

    _guide_example(plugin_site)
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))

    class Contract(MethodContract):
        method = "rtn4"

    suite, method = Contract(), registry_module.get_method("rtn4")
    spec = method.resolve_spec({"r": "4"}, DeviceInfo.cpu())
    suite.test_listed_as_ready(method)
    suite.test_quantized_training_quantizes_the_base(method, spec, kbit_tiny_model)
    suite.test_merge_reproduces_the_adapter_model(method, spec, kbit_tiny_model, tmp_path)
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # the module-level layer class is cached
    for name in ("kbit_rtn4._layers", "kbit_rtn4"):  # the next test session imports them afresh
        sys.modules.pop(name, None)


def test_the_contract_suite_fails_a_method_whose_name_another_distribution_kept(plugin_site, monkeypatch):
    """An author's plugin named like a built-in is refused, and the suite would otherwise pass kbit's own method."""
    from kbit.core.methods import registry as registry_module
    from kbit.core.methods.registry import Registry
    from kbit.testing import MethodContract

    plugin_site.add("kbit-toy", "1.0", {"lora": "kbit_toy"}, modules=("kbit_toy",))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))

    class Clashing(MethodContract):
        method = "lora"

    with pytest.raises(AssertionError, match=r"'kbit methods' refuses method 'lora' of kbit-toy 1.0: method name 'lora' is "
                                             r"already provided by kbit .*: rename yours"):
        Clashing().method_under_test()

    class NotMine(MethodContract):
        method, distribution = "qlora", "kbit-toy"

    with pytest.raises(AssertionError, match="method 'qlora' is provided by kbit .*, not kbit-toy"):
        NotMine().method_under_test()
