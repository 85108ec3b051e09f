"""``MethodContract.tiny_config``: a method the default 64-wide tiny model does not fit runs the suite on
a wider tiny model, and the default model stays as it was; a method of its own layers (``replace_linears``)
passes on GPT-2's ``Conv1D`` layers too."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from kbit.core.methods import registry as registry_module
from kbit.core.methods.registry import Registry
from kbit.plugin import ConfigError, DeviceInfo
from kbit.testing import MethodContract, get_method


@pytest.fixture(autouse=True)
def rtn_wide(plugin_site, monkeypatch):
    """The group-256 method ``rtn-wide`` and ``rtn-exact`` (tests/fixtures/plugins/kbit_rtn.py) as kbit.testing
    finds them."""
    plugin_site.add("kbit-rtn", "1.0", {"rtn-wide": "kbit_rtn:wide", "rtn-exact": "kbit_rtn:exact"},
                    modules=("kbit_rtn",))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))


class TestAGroup256MethodOnAWiderTinyModel(MethodContract):
    method = "rtn-wide"
    options = {"r": "4"}
    tiny_config = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4}


class TestAMethodOfItsOwnLayersOnGPT2(MethodContract):
    method = "rtn-exact"
    options = {"r": "4"}
    tiny_config = {"model_type": "gpt2"}  # Conv1D layers: replace_linears hands them over as Linear


def test_the_default_tiny_model_is_too_narrow_for_that_method(kbit_tiny_model):
    method = get_method("rtn-wide")
    with pytest.raises(ConfigError, match="hidden_size 64 and intermediate_size 128 hold no whole number"):
        method.resolve_for_model(method.resolve_spec({}, DeviceInfo.cpu()), AutoConfig.from_pretrained(kbit_tiny_model))


def test_each_distinct_config_is_built_once_and_the_default_is_unchanged(kbit_tiny_model, kbit_tiny_model_factory):
    wide = kbit_tiny_model_factory(hidden_size=256, intermediate_size=512)
    assert kbit_tiny_model_factory(intermediate_size=512, hidden_size=256) == wide
    assert kbit_tiny_model_factory() == kbit_tiny_model != wide
    default, widened = AutoConfig.from_pretrained(kbit_tiny_model), AutoConfig.from_pretrained(wide)
    assert (default.hidden_size, default.intermediate_size, default.num_attention_heads) == (64, 128, 4)
    assert (widened.hidden_size, widened.intermediate_size, widened.num_attention_heads) == (256, 512, 4)
