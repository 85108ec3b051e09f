import pytest

from kbit.core.errors import ConfigError, PluginError
from kbit.core.contract.options import (
    Option,
    OptionSchema,
    ParserInfo,
    boolean,
    choice,
    describe_parser,
    described,
    integer,
    module_names,
    number,
    parse_assignments,
)

SCHEMA = OptionSchema((
    Option("r", 64, integer(minimum=1, auto=True)),
    Option("dropout", 0.05, number(minimum=0, below=1)),
    Option("merge", True, boolean),
    Option("dtype", "auto", choice("auto", "float32")),
    Option("targets", "all-linear", module_names),
))


def test_defaults_and_overrides_from_strings_and_typed_values():
    assert SCHEMA.resolve({}) == {"r": 64, "dropout": 0.05, "merge": True, "dtype": "auto", "targets": "all-linear"}
    values = SCHEMA.resolve({"r": "16", "dropout": 0.1, "merge": "false", "dtype": "FLOAT32", "targets": "q_proj, v_proj"})
    assert values == {"r": 16, "dropout": 0.1, "merge": False, "dtype": "float32", "targets": ["q_proj", "v_proj"]}
    assert SCHEMA.resolve({"r": "auto"})["r"] == "auto"


@pytest.mark.parametrize("key, raw, message", [
    ("r", "-1", "option 'r'.*integer >= 1"),
    ("r", "1.5", "option 'r'"),
    ("r", True, "option 'r'"),
    ("dropout", "1", "option 'dropout'.*< 1"),
    ("merge", "maybe", "option 'merge'.*true or false"),
    ("dtype", "int3", "option 'dtype'.*one of auto, float32"),
    ("targets", ",", "option 'targets'"),
    ("rr", "3", "unknown option 'rr'.*did you mean r\\?.*valid options: r, dropout"),
    ("lora_r", "8", "unknown option 'lora_r'.*did you mean r\\?"),  # PEFT's name for it, not a near spelling
])
def test_bad_values_name_the_option(key, raw, message):
    with pytest.raises(ConfigError, match=message):
        SCHEMA.resolve({key: raw}, method="m")


def test_parse_assignments():
    assert parse_assignments(["r=16", " a = b=c "]) == {"r": "16", "a": "b=c"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["r16"])


def test_duplicate_option_names_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        OptionSchema((Option("r", 1, int), Option("r", 2, int)))


def test_defaults_are_parsed_as_the_same_text_from_a_user_would_be():
    schema = OptionSchema((
        Option("targets", "q_proj, v_proj", module_names),
        Option("bits", "4", integer(allowed=(4, 8))),
        Option("merge", "no", boolean),
    ))
    assert schema.resolve({}) == {"targets": ["q_proj", "v_proj"], "bits": 4, "merge": False}
    assert schema.defaults()["targets"] == "q_proj, v_proj"  # as declared


@pytest.mark.parametrize("parse, raw", [
    (integer(minimum=1, auto=True), "16"), (integer(minimum=1, auto=True), "auto"), (integer(allowed=(4, 8)), 8),
    (number(minimum=0), "16"), (number(minimum=0, below=1), 0.05), (boolean, "on"), (choice("nf4", "fp4"), "NF4"),
    (module_names, "q_proj,v_proj"), (module_names, ["q_proj"]), (module_names, "all-linear"),
])
def test_each_parser_accepts_a_value_of_the_type_it_returns_as_is(parse, raw):
    value = parse(raw)
    assert parse(value) == value and type(parse(value)) is type(value)


@pytest.mark.parametrize("option, message", [
    (Option("group_size", 48, integer(allowed=(64,))),
     ("option 'group_size' of method m has default 48, which its own parser refuses \\(expected one of 64\\); "
      "give the Option a default its parser accepts")),
    (Option("r", "many", integer(minimum=1)), "option 'r' of method m has default 'many'"),
    (Option("tag", "a", lambda raw: raw + "!"), "option 'tag' of method m: its parser turns its own result 'a!' into 'a!!'"),
])
def test_a_default_its_parser_refuses_is_the_plugins_bug(option, message):
    with pytest.raises(PluginError, match=message):
        OptionSchema((option,)).resolve({}, method="m")


def test_integer_with_allowed_values_refuses_the_others():
    parse = integer(allowed=(2, 3, 4, 5, 6, 8))
    assert [parse(str(b)) for b in (2, 8)] == [2, 8]
    with pytest.raises(ValueError, match="expected one of 2, 3, 4, 5, 6, 8"):
        parse("7")


def test_options_describe_their_type_bounds_and_choices():
    custom = described(lambda raw: str(raw), "text", "any label")
    schema = OptionSchema((
        Option("r", 64, integer(minimum=1, auto=True), "rank"),
        Option("bits", 4, integer(allowed=(4, 8)), "bits"),
        Option("dropout", 0.05, number(minimum=0, below=1), "dropout"),
        Option("quant", "nf4", choice("nf4", "fp4"), "type"),
        Option("merge", True, boolean, "merge"),
        Option("targets", "q,v", module_names, "targets"),
        Option("label", "x", custom, "label"),
        Option("plain", 3, int, "an undescribed parser"),
    ))
    described_options = {o["name"]: o for o in schema.describe()}
    assert list(described_options) == schema.names
    assert described_options["r"] == {"name": "r", "default": 64, "type": "integer",
                                      "allowed": "an integer >= 1 or 'auto'", "choices": None, "help": "rank"}
    assert (described_options["bits"]["choices"], described_options["bits"]["allowed"]) == ([4, 8], "one of 4, 8")
    assert described_options["dropout"]["allowed"] == "a finite number >= 0 and < 1"
    assert (described_options["quant"]["type"], described_options["quant"]["choices"]) == ("choice", ["nf4", "fp4"])
    assert described_options["merge"]["choices"] == [True, False]
    assert (described_options["targets"]["type"], described_options["targets"]["default"]) == ("module names", ["q", "v"])
    assert (described_options["label"]["type"], described_options["label"]["allowed"]) == ("text", "any label")
    assert (described_options["plain"]["type"], described_options["plain"]["allowed"]) == ("integer", "")
    assert describe_parser(custom) == ParserInfo("text", "any label")
