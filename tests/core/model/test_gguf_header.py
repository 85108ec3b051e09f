"""A GGUF file whose metadata disagrees with its tensors is refused from its header, before a model is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kbit.core.errors import ConfigError
from kbit.core.model.check import check_gguf_header
from tests.conftest import run_kbit


@pytest.fixture(scope="module")
def tiny_gguf(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kbit.core.export.gguf import BaseModel, write_gguf

    target = tmp_path_factory.mktemp("gguf-header") / "tiny-f16.gguf"
    write_gguf(tiny, target, "f16", name="tiny", base=BaseModel(name="tiny"))
    return target


def _edited(source: Path, target: Path, key: str, value: int) -> Path:
    """A copy of ``source`` with the integer field ``key`` set to ``value`` in place (as gguf-py's
    gguf_set_metadata does)."""
    from gguf import GGUFReader

    shutil.copy(source, target)
    field = GGUFReader(str(target), "r+").fields[key]
    field.parts[field.data[0]][0] = value
    return target


@pytest.mark.parametrize("key, value, said", [
    ("llama.block_count", 100_000, "llama.block_count = 100000, but its tensors say 2"),
    ("llama.block_count", 1, "llama.block_count = 1, but its tensors say 2"),  # a layer dropped silently
    ("llama.block_count", 0, "llama.block_count = 0, but its tensors say 2"),
    ("llama.embedding_length", 4096, "llama.embedding_length = 4096, but its tensors say 64"),
    ("llama.feed_forward_length", 100_000_000, "llama.feed_forward_length = 100000000, but its tensors say 128"),
    ("llama.attention.key_length", 100_000_000, "llama.attention.key_length = 100000000, but its tensors say 16"),
    ("tokenizer.ggml.eos_token_id", 1_000_000, "tokenizer.ggml.eos_token_id = 1000000, but the last token id is"),
])
def test_metadata_that_its_tensors_contradict_is_refused(tiny_gguf, tmp_path, key, value, said):
    check_gguf_header(tiny_gguf)  # the file as written passes
    edited = _edited(tiny_gguf, tmp_path / "edited.gguf", key, value)
    with pytest.raises(ConfigError, match=f"{said}.*; the file was edited or damaged — re-download or re-export it"):
        check_gguf_header(edited)


def test_eval_of_a_file_claiming_100000_blocks_exits_2_at_once(tiny_gguf, tmp_path):
    edited = _edited(tiny_gguf, tmp_path / "blocks.gguf", "llama.block_count", 100_000)
    result = run_kbit("eval", str(edited), "--limit", "2", "--out", str(tmp_path / "report"), timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "llama.block_count = 100000, but its tensors say 2" in result.stderr
    assert not (tmp_path / "report").exists()


def test_an_unreadable_tensor_table_is_named_not_called_invalid_json(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:2000])
    with pytest.raises(ConfigError, match="cannot read GGUF model .* the file is truncated or damaged"):
        check_gguf_header(cut)
