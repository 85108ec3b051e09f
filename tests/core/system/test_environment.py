"""kbit's on/off environment variables and its cache folder setting, read one way and warned of when wrong."""

from __future__ import annotations

import logging

import pytest

from kbit.core.system.cache import cache_root
from kbit.core.system.environment import env_flag


@pytest.mark.parametrize("value, on", [("1", True), ("Yes", True), ("on", True), ("", False), ("0", False),
                                       ("off", False)])
def test_on_and_off_values(value, on, caplog):
    with caplog.at_level(logging.WARNING, logger="kbit"):
        assert env_flag("KBIT_TEST_FLAG", {"KBIT_TEST_FLAG": value}) is on
    assert not caplog.text


def test_a_value_neither_on_nor_off_is_read_as_off_and_said(caplog):
    with caplog.at_level(logging.WARNING, logger="kbit"):
        assert env_flag("KBIT_BUILTINS_ONLY", {"KBIT_BUILTINS_ONLY": "maybe"}) is False
    assert "KBIT_BUILTINS_ONLY=maybe is neither on (1, true, yes, on) nor off" in caplog.text


def test_a_cache_setting_that_names_a_file_is_said(tmp_path, monkeypatch, caplog):
    file = tmp_path / "cachefile"
    file.write_text("")
    monkeypatch.setenv("KBIT_CACHE", str(file))
    with caplog.at_level(logging.WARNING, logger="kbit"):
        assert cache_root() == file
    assert f"the cache folder {file} (KBIT_CACHE) is a file, so kbit caches nothing" in caplog.text
