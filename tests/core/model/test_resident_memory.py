"""What loading leaves resident: a quantized load holds no map of its checkpoint, and an unquantized
model's map is let go of once quantize_base has replaced most of what it points into."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kbit.core.model.sources import load_causal_lm
from kbit.core.model.resident_memory import checkpoint_mappings, release_checkpoint_mappings

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder of its own, not the session's: these tests read which of its files stay mapped,
    which another test holding the shared model open would change."""
    from kbit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


def mapped(directory: Path) -> list[str]:
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if str(directory) in line]


def test_maps_lines_of_safetensors_files_are_found():
    text = ("7f50-7f60 r--p 00000000 fe:00 1  /models/a/model.safetensors\n"
            "7f70-7f80 rw-p 00000000 00:00 0 \n"
            "7f90-7fa0 r-xp 00000000 fe:00 2  /usr/lib/libc.so.6\n")
    assert checkpoint_mappings(text) == [(0x7F50, 0x7F60)]


@linux
def test_a_quantized_load_keeps_no_map_of_its_checkpoint(tiny):
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = load_causal_lm(str(tiny), quant_config=config, dtype="float32")
    assert mapped(tiny) == []
    reference = load_causal_lm(str(tiny), dtype="float32")  # an unquantized load maps the file and keeps it
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    assert mapped(tiny)
    embedding = model.get_input_embeddings().weight
    torch.testing.assert_close(embedding, reference.get_input_embeddings().weight)


@linux
def test_the_map_goes_once_most_of_it_is_no_longer_used(tiny):
    model = load_causal_lm(str(tiny), dtype="float32")
    assert mapped(tiny), "an unquantized float32 load is expected to keep views of the mapped file"
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    before = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    assert release_checkpoint_mappings(model) == 0  # every weight is a view: copying would only double them
    with torch.no_grad():  # what quantize_base does: new tensors for the linear layers' weights
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not model.get_output_embeddings():
                module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=False)
    assert release_checkpoint_mappings(model) > 0
    import gc

    gc.collect()
    assert mapped(tiny) == []
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name])
