import importlib.metadata
import json
import sys

import pytest

from kbit.core.errors import MissingDependencyError, PluginError, UnknownMethodError
from kbit.core.methods.registry import BROKEN, DISABLED, READY, Registry
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
    "misspelled-required": ("kbit_broken:misspelled_required",
                            "implements unknown hook(s) merge_polcy (misspelled?) and lacks required hook(s) merge_policy"),
    "bad-describe": ("kbit_broken:bad_describe", "describe_method returned dict"),
    "misnamed-argument": ("kbit_broken:misnamed_argument", "Argument(s) {'options_'} are declared in the hookimpl but can "
                          "not be found in the hookspec; name a hook's arguments as kbit's hookspec does: "
                          "resolve_spec(options, device)"),
    "qlora": ("kbit_toy", "already provided by kbit"),
}


def test_each_broken_plugin_is_reported_and_the_rest_still_work(plugin_site):
    plugin_site.add("kbit-broken", "0.0.1", {n: t for n, (t, _) in BROKEN_WAYS.items()}, modules=("kbit_broken", "kbit_import_error", "kbit_toy"))
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"})
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    broken = {r.name: r for r in registry.records() if r.distribution == "kbit-broken"}
    for name, (_, message) in BROKEN_WAYS.items():
        assert broken[name].status == BROKEN, name
        assert message in broken[name].error and "\n" not in broken[name].error, (name, broken[name].error)
        assert broken[name].version == "0.0.1"
    assert broken["fails-import"].location.endswith("kbit_import_error.py")  # where to look, though it did not load
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
    ("wrong_return", "resolve_spec returned dict, expected kbit.plugin.QuantizationSpec"),
    ("raises_in_hook", r"resolve_spec raised ZeroDivisionError: division by zero \(a bug in kbit-broken; kbit --debug shows where\)"),
    ("missing_file_in_hook", r"resolve_spec raised FileNotFoundError: .* \(a bug in kbit-broken"),
    ("undeclared_import_in_hook", r"resolve_spec raised ModuleNotFoundError: .*; install surely_not_installed_xyz, and "
                                  r"kbit-broken should declare it in MethodInfo\(requires=...\)"),
])
def test_hook_contract_violations_name_the_distribution(plugin_site, hook_module, message):
    plugin_site.add("kbit-broken", "0.0.2", {"bad": f"kbit_broken:{hook_module}"}, modules=("kbit_broken",))
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    with pytest.raises(PluginError, match=f"kbit-broken 0.0.2.*{message}"):
        registry.get("bad").resolve_spec({})


def test_a_full_disk_met_in_a_hook_is_the_disks_error_not_the_plugins(plugin_site):
    plugin_site.add("kbit-broken", "0.0.2", {"full": "kbit_broken:disk_full_in_hook"}, modules=("kbit_broken",))
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    with pytest.raises(OSError, match="No space left on device") as raised:
        registry.get("full").resolve_spec({})
    assert not isinstance(raised.value, PluginError) and raised.value.filename == "/data/out"


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


def test_the_lists_take_distribution_names_and_warn_of_names_that_match_nothing(plugin_site, caplog):
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"}, modules=("kbit_toy",))
    plugin_site.add("kbit-other", "1.0", {"other": "kbit_toy"})

    def status(environ):
        return {r.name: r.status for r in Registry(entry_points=plugin_site.entry_points(), environ=environ).records()}

    assert status({"KBIT_DISABLE_PLUGINS": "kbit-toy"})["toy"] == DISABLED  # as pip names it
    allowed = status({"KBIT_PLUGINS": "kbit-toy"})
    assert (allowed["toy"], allowed["other"], allowed["qlora"]) == (READY, DISABLED, READY)
    with caplog.at_level("WARNING", logger="kbit"):
        assert status({"KBIT_DISABLE_PLUGINS": "kbit-tyo"})["toy"] == READY
    assert "KBIT_DISABLE_PLUGINS names kbit-tyo, which is no installed method or distribution" in caplog.text


def _write_toy(plugin_site, module: str, method_info: str, imports: str = "MethodInfo") -> None:
    """Write plugin module ``module``: the toy method's hooks, its ``describe_method`` returning ``method_info``."""
    (plugin_site.root / f"{module}.py").write_text(
        f"from kbit.plugin import {imports}, hookimpl\n"
        "from tests.fixtures.plugins.kbit_toy import OPTIONS, build_quant_config, merge_policy, prepare_model, resolve_spec\n"
        "@hookimpl\n"
        "def describe_method():\n"
        f"    return {method_info}\n"
    )


def test_missing_requirement_gives_install_line(plugin_site):
    _write_toy(plugin_site, "kbit_needs", "MethodInfo(summary='needs', options=OptionSchema(()), "
               "requires=(Requirement('kbit_no_such_pkg', 'pip install kbit-no-such-pkg'),))",
               imports="MethodInfo, OptionSchema, Requirement")
    plugin_site.add("kbit-needs", "1.0", {"needs": "kbit_needs"})
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    with pytest.raises(MissingDependencyError, match="pip install kbit-no-such-pkg"):
        registry.get("needs")


def test_no_builtin_method_is_broken():
    records = [r for r in Registry(environ={"KBIT_BUILTINS_ONLY": "1"}).records() if r.builtin]
    assert records and all(r.status != BROKEN for r in records), [(r.name, r.error) for r in records if r.error]


PLANTED = (
    "from kbit.plugin import MethodInfo, Option, OptionSchema, QuantizationSpec, adapter_options, adapter_settings,"
    " hookimpl, integer\n"
    "from tests.fixtures.plugins.kbit_toy import build_quant_config, prepare_model, merge_policy\n"
    "OPTIONS = {options}\n"
    "@hookimpl\n"
    "def describe_method():\n"
    "    return MethodInfo(summary='planted', options=OPTIONS)\n"
    "@hookimpl\n"
    "def resolve_spec(options, device):\n"
    "    values = OPTIONS.resolve(options, method='{name}')\n"
    "    return QuantizationSpec(method='{name}', adapter=adapter_settings(values))\n"
)


@pytest.fixture
def plant(plugin_site):
    """Writes a method ``name`` with the schema ``options`` (Python source) as distribution kbit-NAME 0.1.0."""
    modules = []

    def add(name, options):
        module = f"kbit_planted_{name}"
        (plugin_site.root / f"{module}.py").write_text(PLANTED.format(options=options, name=name))
        plugin_site.add(f"kbit-{name}", "0.1.0", {name: module})
        modules.append(module)

    yield add
    for module in modules:
        sys.modules.pop(module, None)


def test_an_option_default_its_parser_refuses_makes_the_method_broken(plugin_site, plant):
    plant("group48", "adapter_options() + OptionSchema((Option('group_size', 48, integer(allowed=(64,)),"
             " 'weights per scale'),))")
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    record = next(r for r in registry.records() if r.name == "group48")
    assert record.status == BROKEN
    assert record.error == ("kbit-group48 0.1.0: option 'group_size' has default 48, which its own parser refuses "
                            "(expected one of 64); give the Option a default its parser accepts")
    assert registry.get("qlora").name == "qlora"
    listed = run_kbit("methods", env=plugin_site.env())
    assert listed.returncode == 0, listed.stderr
    assert f"group48 broken: {record.error}" in listed.stdout


def test_a_parser_that_crashes_on_its_default_makes_the_method_broken(plugin_site, plant):
    plant("crashes", "adapter_options() + OptionSchema((Option('size', 1, lambda raw: raw.upper()),))")
    record = next(r for r in Registry(entry_points=plugin_site.entry_points(), environ={}).records() if r.name == "crashes")
    assert record.status == BROKEN
    assert "option 'size' raised AttributeError" in record.error and "kbit-crashes 0.1.0" in record.error


def test_a_string_default_of_a_list_option_is_split_as_a_users_string(plugin_site, plant):
    plant("listdefault", "adapter_options(target_modules='q_proj,v_proj')")
    method = Registry(entry_points=plugin_site.entry_points(), environ={}).get("listdefault")
    assert method.resolve_spec({}).adapter.target_modules == ("q_proj", "v_proj")



@pytest.mark.slow
def test_a_name_two_distributions_claim_goes_to_the_first_loaded_and_both_commands_say_so(plugin_site):
    plugin_site.add("kbit-zz-toy", "2.0", {"toy": "kbit_toy"}, modules=("kbit_toy",))
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"})
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    assert registry.get("toy").distribution == "kbit-toy"  # externals load in distribution-name order
    loser = next(r for r in registry.records() if r.distribution == "kbit-zz-toy")
    assert loser.status == BROKEN
    assert loser.error == "method name 'toy' is already provided by kbit-toy 1.0; rename the entry point in kbit-zz-toy"
    assert registry.clash_warning("toy-lora") == ("method 'toy' is also claimed by kbit-zz-toy 2.0 (method 'toy', "
                                                  "claiming the name); using kbit-toy 1.0's (the first to load keeps a name: see 'kbit methods')")
    assert registry.clash_warning("qlora") == ""
    spec = run_kbit("spec", "toy", "--json", env=plugin_site.env())
    assert spec.returncode == 0, spec.stderr
    assert spec.stderr == f"kbit: warning: {registry.clash_warning('toy')}\n"
    refused = run_kbit("train", "--method", "toy", "-o", "nonsense=1", env=plugin_site.env())
    assert refused.returncode == 2
    assert "also claimed by kbit-zz-toy 2.0" in refused.stderr and "unknown option 'nonsense'" in refused.stderr


def test_a_broken_plugin_claims_no_name(plugin_site):
    plugin_site.add("kbit-aa", "1.0", {"toy": "kbit_import_error"}, modules=("kbit_import_error",))
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy"}, modules=("kbit_toy",))
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    assert registry.get("toy").distribution == "kbit-toy"
    assert registry.get("toy-lora").distribution == "kbit-toy"
    assert {(r.distribution, r.status) for r in registry.records() if r.name == "toy"} == {("kbit-aa", BROKEN),
                                                                                          ("kbit-toy", READY)}


def test_an_alias_another_method_holds_makes_the_method_broken_saying_to_drop_the_alias(plugin_site):
    _write_toy(plugin_site, "kbit_toy_nf4", "MethodInfo(summary='toy, aliased nf4', options=OPTIONS, aliases=('nf4',))")
    plugin_site.add("kbit-toy", "1.0", {"toy": "kbit_toy_nf4"})
    registry = Registry(entry_points=plugin_site.entry_points(), environ={})
    record = next(r for r in registry.records() if r.name == "toy")
    kbit = f"kbit {importlib.metadata.version('kbit')}"
    assert record.status == BROKEN
    assert record.error == (f"its alias 'nf4' is already provided by {kbit} (an alias of method 'qlora'); "
                            "drop that alias from MethodInfo(aliases=...) in kbit-toy")
    assert registry.get("nf4").name == "qlora"
    assert "kbit-toy 1.0 (method 'toy', claiming its alias 'nf4')" in registry.clash_warning("nf4")


def test_a_plugin_that_takes_a_disabled_builtins_name_is_said_to(plugin_site, plant):
    plant("lora", "adapter_options()")
    registry = Registry(entry_points=plugin_site.entry_points(), environ={"KBIT_DISABLE_PLUGINS": "kbit"})
    assert registry.get("lora").distribution == "kbit-lora"
    assert registry.clash_warning("lora") == ("method 'lora' is kbit-lora 0.1.0's: kbit's own 'lora' is blocked by "
                                              "KBIT_DISABLE_PLUGINS")
    assert Registry(entry_points=plugin_site.entry_points(), environ={}).get("lora").distribution == "kbit"
