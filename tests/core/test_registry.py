import importlib.metadata
import json

import pytest

from kbit.core.errors import MissingDependencyError, PluginError, UnknownMethodError
from kbit.core.registry import BROKEN, DISABLED, READY, Registry
from tests.conftest import run_kbit


def test_builtin_qlora_is_ready_and_found_by_alias():
    registry = Registry()
    assert registry.get("qlora").name == "qlora"
    assert registry.get("NF4").name == "qlora"
    record = next(r for r in registry.records() if r.name == "qlora")
    assert record.status == READY and record.builtin


def test_unknown_method_names_closest():
    with pytest.raises(UnknownMethodError, match="did you mean qlora"):
        Registry().get("qlroa")


def test_external_distribution_is_listed_and_selected_by_name(plugin_site):
    plugin_site.add("kbit-toy", "1.2.3", {"toy": "kbit_toy"}, modules=("kbit_toy",))
    result = run_kbit("methods", "--json", env=plugin_site.env())
    assert result.returncode == 0, result.stderr
    toy = next(m for m in json.loads(result.stdout) if m["name"] == "toy")
    assert (toy["distribution"], toy["version"], toy["status"]) == ("kbit-toy", "1.2.3", READY)
    assert toy["location"].endswith("kbit_toy.py")
    spec = run_kbit("spec", "toy-lora", "-o", "r=4", "--json", env=plugin_site.env())
    assert spec.returncode == 0, spec.stderr
    assert json.loads(spec.stdout)["spec"]["adapter"]["r"] == 4


BROKEN_WAYS = {
    "fails-import": ("kbit_import_error", "import failed: ImportError"),
    "lacks-hook": ("kbit_broken:lacks_hook", "lacks required hook(s) merge_policy"),
    "misspelled": ("kbit_broken:misspelled", "unknown hook(s) merge_polcy"),
    "bad-describe": ("kbit_broken:bad_describe", "describe_method returned dict"),
    "qlora": ("kbit_toy", "already provided by kbit"),
}


def test_each_broken_plugin_is_reported_and_the_rest_still_work(plugin_site):
    plugin_site.add("kbit-broken", "0.0.1", {n: t for n, (t, _) in BROKEN_WAYS.items()}, modules=("kbit_broken", "kbit_import_error", "kbit_toy"))
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"})
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    broken = {r.name: r for r in registry.records() if r.distribution == "kbit-broken"}
    for name, (_, message) in BROKEN_WAYS.items():
        assert broken[name].status == BROKEN, name
        assert message in broken[name].error, (name, broken[name].error)
        assert broken[name].version == "0.0.1"
    assert registry.get("qlora").distribution == "kbit"
    assert registry.get("toy").distribution == "kbit-toy"
    with pytest.raises(PluginError, match="kbit-broken 0.0.1"):
        registry.get("lacks-hook")


def test_broken_plugins_do_not_break_the_cli(plugin_site):
    plugin_site.add("kbit-broken", "0.0.1", {n: t for n, (t, _) in BROKEN_WAYS.items()}, modules=("kbit_broken", "kbit_import_error", "kbit_toy"))
    result = run_kbit("methods", "--json", env=plugin_site.env())
    assert result.returncode == 0, result.stderr
    statuses = {(m["name"], m["distribution"]): m["status"] for m in json.loads(result.stdout)}
    assert statuses[("qlora", "kbit")] == READY
    assert statuses[("fails-import", "kbit-broken")] == BROKEN
    used = run_kbit("spec", "fails-import", env=plugin_site.env())
    assert used.returncode == 2
    assert used.stderr.count("\n") == 1 and "kbit-broken" in used.stderr


@pytest.mark.parametrize("hook_module, message", [
    ("wrong_return", "resolve_spec returned dict, expected kbit.QuantizationSpec"),
    ("raises_in_hook", "resolve_spec raised ZeroDivisionError"),
])
def test_hook_contract_violations_name_the_distribution(plugin_site, hook_module, message):
    plugin_site.add("kbit-broken", "0.0.2", {"bad": f"kbit_broken:{hook_module}"}, modules=("kbit_broken",))
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    with pytest.raises(PluginError, match=f"kbit-broken 0.0.2.*{message}"):
        registry.get("bad").resolve_spec({})


def test_allow_list_block_list_and_builtins_only(plugin_site):
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"}, modules=("kbit_toy",))
    plugin_site.add("kbit-other", "1.0", {"other": "kbit_toy"})

    def status(environ):
        registry = Registry(entry_points=plugin_site.entry_points(), environ=environ)
        return {r.name: r.status for r in registry.records()}

    allowed = status({"KBIT_PLUGINS": "toy"})
    assert (allowed["qlora"], allowed["toy"], allowed["other"]) == (READY, READY, DISABLED)
    assert status({"KBIT_DISABLE_PLUGINS": "toy,qlora"})["toy"] == DISABLED
    assert status({"KBIT_DISABLE_PLUGINS": "toy,qlora"})["qlora"] == DISABLED
    builtins_only = status({"KBIT_BUILTINS_ONLY": "1"})
    assert builtins_only["qlora"] == READY
    kbits_own = {ep.name for ep in importlib.metadata.distribution("kbit").entry_points if ep.group == "kbit.methods"}
    assert {name for name, state in builtins_only.items() if state == READY} <= kbits_own
    assert (builtins_only["toy"], builtins_only["other"]) == (DISABLED, DISABLED)


def test_missing_requirement_gives_install_line(plugin_site):
    module = plugin_site.root / "kbit_needs.py"
    module.write_text(
        "from kbit import MethodInfo, OptionSchema, Requirement, hookimpl\n"
        "from tests.fixtures.plugins.kbit_toy import resolve_spec, build_quant_config, prepare_model, merge_policy\n"
        "@hookimpl\n"
        "def describe_method():\n"
        "    return MethodInfo(summary='needs', options=OptionSchema(()),"
        " requires=(Requirement('kbit_no_such_pkg', 'pip install kbit-no-such-pkg'),))\n"
    )
    plugin_site.add("kbit-needs", "1.0", {"needs": "kbit_needs"})
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    with pytest.raises(MissingDependencyError, match="pip install kbit-no-such-pkg"):
        registry.get("needs")
