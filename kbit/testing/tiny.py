"""A tiny random causal LM (Llama architecture unless asked for another) with a character-level tokenizer and chat template.

It is saved as an ordinary Hugging Face directory, so every loader path of kbit (quantized loads
included) runs on it in seconds, without downloads.
"""

from __future__ import annotations

import contextlib
import logging
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


def _tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def make_tiny_model(path: str | Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0, tied: bool = True,
                    model_type: str = "llama", **config: Any) -> Path:
    """Write a random tiny model and its tokenizer to ``path``; returns the path.

    ``model_type`` is a transformers model type (``llama`` by default; e.g. ``qwen3``, ``gemma2``, or
    ``gpt2``, whose layers are ``Conv1D``), built from the same Llama-named fields through
    ``AutoConfig.for_model``. The hidden and intermediate widths are multiples of 64 so block- and
    group-wise quantizers fit. ``config`` overrides config fields (``intermediate_size``,
    ``num_attention_heads``, ``num_key_value_heads`` …); the intermediate width defaults to twice
    ``hidden_size`` and the head width to ``hidden_size`` over the 4 heads.
    """
    with _libraries_quiet():
        return _write_tiny_model(Path(path), hidden_size, layers, seed, tied, model_type, config)


def _write_tiny_model(path: Path, hidden_size: int, layers: int, seed: int, tied: bool, model_type: str,
                      config: dict[str, Any]) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = _tokenizer()
    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": tied,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if model_type != "llama":  # other configs default the head width otherwise (Gemma's is 256)
        fields["head_dim"] = hidden_size // 4
    if model_type.startswith("gemma"):  # Gemma scales queries by its own field; real checkpoints set it to the head width
        fields["query_pre_attn_scalar"] = hidden_size // 4
    if model_type == "gpt2":  # GPT-2's name for the intermediate width
        fields["n_inner"] = hidden_size * 2
    model_config = AutoConfig.for_model(model_type, **{**fields, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# What transformers' save path makes other libraries say on a CPU machine (torchao's CUDA kernels that do not load,
# torch's pytree deprecations), none of it about the model written.
QUIET_LOGGERS = ("torchao", "torchao.kernel.intmm", "torch.utils._pytree")


@contextlib.contextmanager
def _libraries_quiet() -> Iterator[None]:
    """No progress bar and no warnings of ``QUIET_LOGGERS`` while the model is built and written; both restored after."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # before the imports that warn
        logger.setLevel(logging.ERROR)
    import transformers.utils.logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()
