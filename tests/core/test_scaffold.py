"""The method ``kbit new-method`` writes: its option parsers agree with what QuantizationSpec accepts."""

import importlib
import sys

import pytest

from kbit.core.system.device import DeviceInfo
from kbit.core.errors import ConfigError
from kbit.core.scaffold import write_method
from kbit.core.contract.spec import QuantizationSpec


@pytest.fixture
def scaffolded(tmp_path, monkeypatch):
    write_method("scaffold-check", tmp_path / "dist")
    monkeypatch.syspath_prepend(str(tmp_path / "dist"))
    yield importlib.import_module("kbit_scaffold_check")
    for name in [m for m in sys.modules if m.startswith("kbit_scaffold_check")]:
        sys.modules.pop(name)


def test_every_bits_value_the_option_accepts_makes_a_valid_spec(scaffolded):
    bits = next(o for o in scaffolded.OPTIONS.options if o.name == "bits")
    accepted = []
    for value in range(33):
        try:
            bits.parse(str(value))
        except ValueError:
            continue
        accepted.append(value)
        spec = scaffolded.resolve_spec({"bits": str(value)}, DeviceInfo.cpu())
        assert isinstance(spec, QuantizationSpec) and spec.weights_bits == value
    assert 4 in accepted and 7 not in accepted
    with pytest.raises(ConfigError, match="option 'bits' for method scaffold-check: expected one of 2, 3, 4, 5, 6, 8"):
        scaffolded.resolve_spec({"bits": "7"}, DeviceInfo.cpu())


def test_the_scaffolds_defaults_pass_their_parsers(scaffolded):
    assert scaffolded.OPTIONS.parsed_defaults()["bits"] == 4
