"""Fixtures for the export tests: tiny models of each exported architecture, a trained tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_kbit


def variant_model(tiny: Path, target: Path, model_type: str, **overrides) -> Path:
    """A tiny random model of ``model_type`` with the tiny model's tokenizer files."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoConfig.from_pretrained(tiny).to_dict()
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "pad_token_id", "bos_token_id",
            "eos_token_id")
    config = AutoConfig.for_model(model_type, **{**{k: base[k] for k in keys}, **overrides})
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    for file in tiny.iterdir():
        if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(file, target / file.name)
    return target


def bpe_model(tiny: Path, target: Path, model_type: str = "llama", **overrides) -> Path:
    """A tiny random model whose tokenizer is a small byte-level BPE (GPT-2 pre-tokenizer; Qwen's split rule before
    it for a qwen model type) with the tiny chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if model_type.startswith("qwen"):  # as Qwen's own tokenizer.json splits (single digits …) before the bytes
        from tokenizers import Regex

        from kbit.core.export.vocab import QWEN2_SPLIT

        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["What is 12 + 34? It is 46.", "user assistant answer numbers"] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        chat_template=AutoTokenizer.from_pretrained(tiny).chat_template)
    model = variant_model(tiny, target, model_type, vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=2,
                          eos_token_id=3, **overrides)
    for file in model.iterdir():
        if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            file.unlink()
    tokenizer.save_pretrained(model)
    return model


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny: Path) -> Path:
    """A finished qlora run on the tiny model (adapter + merged), with held-out items to check against."""
    run = tmp_path_factory.mktemp("export-run") / "run"
    result = run_kbit("train", "--model", str(tiny), "--max-steps", "2", "--batch-size", "2", "-o", "r=4",
                      "-o", "compute_dtype=float32", "--max-examples", "60", "--eval-limit", "6", "--output", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    return run
