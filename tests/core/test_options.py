import pytest

from kbit.core.errors import ConfigError
from kbit.core.options import Option, OptionSchema, boolean, choice, integer, module_names, number, parse_assignments

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
