"""The tokenizer a GGUF file carries: copied from the base's own GGUF, or built from ``tokenizer.json``.

A base that came from a GGUF file (the embedded default does) already has llama.cpp's tokenizer
keys; they are copied unchanged, since a fine-tune does not change the vocabulary. For a Hugging
Face base the keys are built as llama.cpp's ``convert_hf_to_gguf.py`` builds them:

- byte-level BPE (GPT-2 style; Llama 3, Qwen2, SmolLM): tokenizer model ``gpt2``, tokens and types as
  ``TextModel.get_vocab_base`` makes them (added special tokens CONTROL, other added tokens
  USER_DEFINED, ids missing from the vocabulary ``[PADn]`` UNUSED), merges through
  ``gguf.SpecialVocab``. The pre-tokenizer name (``tokenizer.ggml.pre``) llama.cpp finds by hashing
  the tokens of a probe text (``get_vocab_base_pre``); kbit keeps the hashes of the families it
  supports and also recognises three pre-tokenizers by their structure in the tokenizer transformers
  loads (plain GPT-2 ``ByteLevel``; SmolLM's single digits + ``ByteLevel``; Qwen2's split rule + ``ByteLevel``). An unknown one is refused, as
  llama.cpp refuses it.
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral v0.1): ``gguf.LlamaHfVocab``, the class
  ``LlamaModel._set_vocab_llama_hf`` uses; tokenizer model ``llama``, pre-tokenizer ``default``.
- A character-level ``WordLevel`` vocabulary of single-byte characters (kbit's tiny test model):
  written as a SentencePiece (``llama``) vocabulary with equal scores, the space spelled ``▁`` and no
  space prefix, which splits text over those characters into the same ids (a ``gpt2`` vocabulary
  would need merges, and ``gguf`` cannot write an empty merge list). This is kbit's own rule;
  llama.cpp has no WordLevel converter.

Special token ids, add-BOS/EOS flags and the chat template come from ``gguf.SpecialVocab`` in every
Hugging Face case.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

from kbit.core.errors import ConfigError

SPACE = "\u2581"  # SentencePiece's visible space
# Architectures whose vocabulary is SentencePiece without a space prefix (llama.cpp reads it as tokenizer model llama).
SENTENCEPIECE_ONLY = ("gemma2", "gemma3")
# Architectures whose llama.cpp reader takes a SentencePiece vocabulary (tokenizer model llama); the others expect
# byte-level BPE.
SENTENCEPIECE_READERS = ("llama", "phi3", *SENTENCEPIECE_ONLY)
# The probe text and hashes of convert_hf_to_gguf.py's get_vocab_base_pre, for the families kbit exports.
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
    "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # Smaug-Llama-3-70B-Instruct
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo-Base-2407
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}


def copy_gguf_tokenizer(writer: Any, reader: Any, base_gguf: Path) -> None:
    """Copy every ``tokenizer.*`` key of ``base_gguf`` (open in ``reader``) into ``writer`` with its value type."""
    from gguf import GGUFValueType

    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            item = field.types[-1]
            if item == GGUFValueType.STRING:
                values: Any = [bytes(field.parts[i]) for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(key, values, kind, sub_type=item)
        else:
            writer.add_key_value(key, field.contents(), kind)
        copied += 1
    if not copied:
        raise ConfigError(f"{base_gguf} has no tokenizer keys to carry over")


def add_hf_tokenizer(writer: Any, model_dir: Path, vocab_size: int, architecture: str) -> str:
    """Add tokenizer keys built from ``model_dir``'s ``tokenizer.json``; returns the tokenizer model name."""
    import gguf

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{model_dir} has no tokenizer.json; kbit builds the GGUF tokenizer from it")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    kind = model.get("type")
    # A byte-level pre-tokenizer makes it a GPT-2 style vocabulary even with byte_fallback set (the
    # tokenizer.json transformers writes for a model it converted from a GGUF file has both).
    if kind == "BPE" and model.get("byte_fallback") and not _byte_level(spec):
        vocab = gguf.LlamaHfVocab(Path(model_dir))
        tokens, scores, types = zip(*vocab.all_tokens())
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        if architecture in SENTENCEPIECE_ONLY:
            writer.add_add_space_prefix(False)  # as Gemma2Model.set_vocab writes it: Gemma adds no leading space
        _add_special_tokens(writer, model_dir, len(tokens))
        return "llama"
    if kind == "BPE":
        if not model.get("merges"):
            raise ConfigError(f"{model_dir}: its BPE tokenizer has no merges, and llama.cpp cannot load a BPE vocabulary "
                              "without them; use llama.cpp's convert_hf_to_gguf.py, or a tokenizer.json with its merges")
        tokenizer = _auto_tokenizer(model_dir)
        tokens, types = _base_vocab(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_pre_tokenizer(spec, tokenizer, model_dir))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        _add_special_tokens(writer, model_dir, len(tokens), merges=True, tokenizer=tokenizer)
        return "gpt2"
    if kind == "WordLevel":
        if architecture not in SENTENCEPIECE_READERS:
            raise ConfigError(f"{model_dir}: a WordLevel tokenizer is exported only for the "
                              f"{', '.join(SENTENCEPIECE_READERS)} architectures, not {architecture} (whose GGUF "
                              "readers expect byte-level BPE)")
        tokenizer = _auto_tokenizer(model_dir)
        added = tokenizer.get_added_vocab()
        plain = [t for t in (model.get("vocab") or {}) if t not in added]
        if not all(len(t.encode("utf-8")) == 1 for t in plain):
            raise ConfigError(f"{model_dir}: a WordLevel tokenizer is exported only when every token is one byte; "
                              "this one has longer tokens")
        tokens, types = _base_vocab(tokenizer, vocab_size)
        tokens = [SPACE if t == " " and types[i] == gguf.TokenType.NORMAL else t for i, t in enumerate(tokens)]
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_token_types(types)
        writer.add_add_space_prefix(False)
        _add_special_tokens(writer, model_dir, len(tokens), tokenizer=tokenizer)
        return "llama"
    raise ConfigError(f"{model_dir}: tokenizer model '{kind}' is not exported to GGUF by kbit (BPE and byte-level "
                      "WordLevel are); use llama.cpp's convert_hf_to_gguf.py")


def _add_special_tokens(writer: Any, model_dir: Path, n_vocab: int, *, merges: bool = False,
                        tokenizer: Any = None) -> None:
    """Special token ids, add-BOS/EOS flags, chat template (``gguf.SpecialVocab``). Where ``tokenizer_config.json``
    does not say whether a BOS token is added (transformers 5 leaves it to the tokenizer's post-processor), the
    file says what the tokenizer does: llama.cpp would otherwise add one to every SentencePiece-type prompt."""
    import gguf

    special = gguf.SpecialVocab(Path(model_dir), load_merges=merges, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:
        tokenizer = tokenizer or _auto_tokenizer(model_dir)
        bos = tokenizer.bos_token_id
        writer.add_add_bos_token(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])


def _auto_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _base_vocab(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens and token types by id, as ``TextModel.get_vocab_base`` lists them."""
    import gguf

    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise ConfigError(f"the tokenizer has ids up to {max(reverse)} but the model's vocabulary has {vocab_size} rows")
    added = tokenizer.get_added_vocab()
    decoders = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        token = reverse.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if token in added:
            special = decoders[index].special or (token.startswith("<|") and token.endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


# Qwen2's split rule (transformers' Qwen2Tokenizer; llama.cpp's "qwen2" pre-tokenizer, the same regex
# with the contractions spelled case by case): letters, single digits, punctuation, whitespace.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The steps of a tokenizers pre-tokenizer spec (a ``Sequence``'s members, or the one step)."""
    pre = pre or {}
    return pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]


def _byte_level(spec: dict[str, Any]) -> bool:
    return any(step.get("type") == "ByteLevel" for step in _pre_steps(spec.get("pre_tokenizer")))


def _pre_tokenizer(spec: dict[str, Any], tokenizer: Any, model_dir: Path) -> str:
    """llama.cpp's name for the pre-tokenizer transformers really runs for this model: from 5.2x a
    tokenizer class may replace ``tokenizer.json``'s (``Qwen2Tokenizer`` sets Qwen2's split rule)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    steps = _pre_steps(json.loads(backend.to_str()).get("pre_tokenizer") if backend is not None else spec.get("pre_tokenizer"))
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex")) for s in steps]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    if kinds == [("Split", None, None), ("ByteLevel", None, False)] \
            and steps[0].get("pattern", {}).get("Regex") == QWEN2_SPLIT and steps[0].get("behavior") == "Isolated":
        return "qwen2"
    digest = sha256(str(tokenizer.encode(PROBE_TEXT)).encode()).hexdigest()
    if digest in KNOWN_PRE_HASHES:
        return KNOWN_PRE_HASHES[digest]
    raise ConfigError(f"{model_dir}: its BPE pre-tokenizer is not one kbit knows llama.cpp's name for (probe hash "
                      f"{digest[:16]}…); use llama.cpp's convert_hf_to_gguf.py, which knows more tokenizers")
