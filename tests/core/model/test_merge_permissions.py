"""``merged/`` (safetensors writes its files 0600 whatever the umask) ends with the umask's modes."""

from __future__ import annotations

import os

import pytest

from kbit.core.model.merge import save_model


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_a_merged_folder_follows_the_umask(tiny, tmp_path, umask, file_mode, folder_mode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)
    previous = os.umask(umask)
    try:
        save_model(model, tokenizer, tmp_path / "run" / "merged")
    finally:
        os.umask(previous)
    merged = tmp_path / "run" / "merged"
    files = {p.name: oct(p.stat().st_mode & 0o777) for p in merged.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert set(files.values()) == {oct(file_mode)}, files
    assert oct(merged.stat().st_mode & 0o777) == oct(folder_mode)
