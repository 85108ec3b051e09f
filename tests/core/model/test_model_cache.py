"""GGUF conversions in kbit's cache: verified on use, converted again when damaged, staging cleaned.

A tiny GGUF written from the tiny random model stands in for the embedded SmolLM2 (converting that
takes minutes); ``KBIT_CACHE`` points into the test's own folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kbit.core.model.sources import STAGING_MARK, convert_gguf, resolve_model


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory) -> Path:
    from kbit.core.export.gguf import BaseModel, write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(tiny, path, "f16", name="tiny", base=BaseModel(name="tiny"))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("KBIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def _weights(directory: Path) -> dict[str, list[float]]:
    from safetensors.torch import load_file

    return {k: v.flatten().tolist() for k, v in load_file(str(directory / "model.safetensors")).items()}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [
    lambda target: _truncate(target / "model.safetensors"),
    lambda target: (target / "tokenizer.json").unlink(),
    lambda target: (target / "config.json").write_text("{"),
    lambda target: _truncate(target / "kbit-files.json"),
], ids=["truncated-weights", "missing-tokenizer", "broken-config", "broken-file-list"])
def test_a_damaged_conversion_is_converted_again_with_a_warning(tiny_gguf, cache, caplog, damage):
    source = resolve_model(str(tiny_gguf))
    target = Path(source.path)
    expected = _weights(target)
    damage(target)
    with caplog.at_level(logging.WARNING, logger="kbit"):
        again = resolve_model(str(tiny_gguf))
    assert again.path == source.path
    assert any("is damaged" in r.getMessage() and str(target) in r.getMessage() for r in caplog.records), caplog.text
    assert _weights(target) == expected
    assert sorted(p.name for p in cache.iterdir()) == [target.name]  # nothing left beside it


def test_a_conversion_from_before_the_file_list_is_kept_when_sound_and_redone_when_truncated(tiny_gguf, cache, caplog):
    target = convert_gguf(tiny_gguf, name="tiny", digest="0123456789ab")
    (target / "kbit-files.json").unlink()
    written = (target / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(tiny_gguf, name="tiny", digest="0123456789ab") == target
    assert (target / "model.safetensors").stat().st_mtime_ns == written  # sound: not converted again
    _truncate(target / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="kbit"):
        convert_gguf(tiny_gguf, name="tiny", digest="0123456789ab")
    assert "model.safetensors are corrupt or truncated" in caplog.text
    assert (target / "kbit-files.json").is_file()


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def _staging(cache: Path, name: str, mark: dict | None, age_s: float = 0) -> Path:
    folder = cache / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    if mark is not None:
        (folder / STAGING_MARK).write_text(json.dumps(mark))
    if age_s:
        old = time.time() - age_s
        os.utime(folder, (old, old))
    return folder


def test_staging_folders_of_dead_conversions_are_removed_and_live_ones_kept(tiny_gguf, cache):
    import socket

    host = socket.gethostname()
    dead = _staging(cache, ".tiny-aaaa-v2-dead", {"pid": _dead_pid(), "host": host})
    old_unmarked = _staging(cache, ".tiny-aaaa-v2-old", None, age_s=2 * 24 * 3600)
    live = _staging(cache, ".tiny-aaaa-v2-live", {"pid": os.getpid(), "host": host})
    fresh_unmarked = _staging(cache, ".tiny-aaaa-v2-fresh", None)
    elsewhere = _staging(cache, ".tiny-aaaa-v2-elsewhere", {"pid": _dead_pid(), "host": f"not-{host}"})
    target = convert_gguf(tiny_gguf, name="tiny", digest="0123456789ab")
    assert not dead.exists() and not old_unmarked.exists()
    assert live.is_dir() and fresh_unmarked.is_dir() and elsewhere.is_dir()
    assert not (target / STAGING_MARK).exists()  # the finished conversion carries no staging mark


def test_a_conversion_killed_midway_leaves_a_folder_the_next_one_removes(tiny_gguf, cache):
    script = ("import os, sys; from pathlib import Path; import kbit.core.model.sources as m\n"
              "def die(*a, **k): os._exit(9)\n"
              "m._write_source_record = die\n"
              f"m.convert_gguf(Path({str(tiny_gguf)!r}), name='tiny', digest='0123456789ab')\n")
    killed = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr[-2000:]
    [left] = [p for p in cache.iterdir() if p.name.startswith(".")]
    assert (left / "model.safetensors").is_file()
    target = convert_gguf(tiny_gguf, name="tiny", digest="0123456789ab")
    assert sorted(p.name for p in cache.iterdir()) == [target.name]


def test_a_file_whose_tokenizer_transformers_cannot_save_as_read_is_refused_and_nothing_is_cached(kbit_tiny_model_factory,
                                                                                                  cache, tmp_path):
    from kbit.core.errors import ConfigError
    from kbit.core.export.gguf import BaseModel, write_gguf

    # transformers' gemma2 GGUF reader builds Gemma's own special tokens in; the tiny chat tokens are not those,
    # and its saved tokenizer splits them into characters
    gemma2 = tmp_path / "tiny-gemma2.gguf"
    write_gguf(kbit_tiny_model_factory(model_type="gemma2"), gemma2, "f16", name="g", base=BaseModel(name="g"))
    with pytest.raises(ConfigError, match="does not read the tokenizer of .* back as it converted it"):
        convert_gguf(gemma2, name="g", digest="0123456789ab")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_file_whose_tokenizer_transformers_reads_otherwise_than_llama_cpp_is_refused(kbit_tiny_model_factory, cache,
                                                                                     tmp_path):
    from kbit.core.errors import ConfigError
    from kbit.core.export.gguf import BaseModel, write_gguf

    pytest.importorskip("llama_cpp")
    # transformers' phi3 GGUF reader drops the spaces of the tiny vocabulary, which llama.cpp keeps; saved and read
    # back, the conversion encodes as it did, so only the file's own tokenizer shows the difference
    phi3 = tmp_path / "tiny-phi3.gguf"
    write_gguf(kbit_tiny_model_factory(model_type="phi3"), phi3, "f16", name="p", base=BaseModel(name="p"))
    with pytest.raises(ConfigError, match="converts the tokenizer of .* differently from how llama.cpp reads it .*use "
                                          "the model's Hugging Face checkpoint"):
        convert_gguf(phi3, name="p", digest="0123456789ab")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_cache_that_cannot_hold_the_conversion_names_kbit_cache(tiny_gguf, tmp_path, monkeypatch):
    from kbit.core.errors import ConfigError

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("KBIT_CACHE", str(not_a_folder))
    with pytest.raises(ConfigError, match="cannot hold the converted model .*set KBIT_CACHE to a writable folder"):
        convert_gguf(tiny_gguf, name="tiny", digest="0123456789ab")
