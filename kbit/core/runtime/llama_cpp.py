"""A GGUF file (and optionally a llama.cpp LoRA adapter GGUF) run in llama.cpp through llama-cpp-python.

kbit's other figures for a GGUF come from transformers' reader, which dequantizes to float; llama.cpp
computes differently (it quantizes activations in its quantized matmuls, keeps the KV cache in f16),
so what a user runs is measured here, in llama.cpp itself.

The caller tokenizes (with the reference model's tokenizer) and passes token ids, so both sides of a
comparison see the same ids. Every call is one sequence from position 0: the KV cache is cleared
first. llama.cpp's own log goes to kbit's log at DEBUG level (shown with ``--verbose``), not to stderr.
"""

from __future__ import annotations

import collections
import ctypes
import importlib.util
import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from kbit.core.errors import ConfigError, MissingDependencyError

INSTALL = "pip install 'kbit[llama-cpp]'"
DEFAULT_N_CTX = 2048
log = logging.getLogger("kbit.llama_cpp")
_log_callback: Any = None  # the ctypes callback must outlive every call llama.cpp makes to it
# llama.cpp's last log lines: a failed load says why only there (llama-cpp-python raises "Failed to load model")
_recent: collections.deque[str] = collections.deque(maxlen=8)


def installed() -> bool:
    """Whether llama-cpp-python is importable here (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def require() -> Any:
    """The ``llama_cpp`` module, its log routed to kbit's; MissingDependencyError with the install line if absent."""
    if not installed():
        raise MissingDependencyError(f"running a GGUF in llama.cpp needs llama-cpp-python: {INSTALL}")
    import llama_cpp

    _route_log(llama_cpp)
    return llama_cpp


def _route_log(llama_cpp: Any) -> None:
    # llama-cpp-python prints llama.cpp's errors to stderr itself (verbose=False keeps only those);
    # kbit reports failures as one-line errors, so the native log goes to kbit's log instead.
    global _log_callback
    if _log_callback is None:
        @llama_cpp.llama_log_callback
        def forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", errors="replace").rstrip()
            log.debug("%s", line)
            _recent.append(line)

        _log_callback = forward
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def tokenize_with_file(model_path: Path, text: str) -> list[int]:
    """``text`` as ``model_path``'s own tokenizer encodes it in llama.cpp (its vocabulary only, no weights loaded):
    no BOS added, special tokens parsed, as :meth:`LlamaCppModel.tokenize`. ConfigError for a file llama.cpp
    cannot read."""
    lib = require()
    try:
        vocabulary = lib.Llama(str(model_path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"llama.cpp cannot read the vocabulary of {model_path} ({exc}); check that it is a GGUF "
                          "model file") from None
    try:
        return list(vocabulary.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    finally:
        vocabulary.close()


@attrs.frozen
class Timing:
    """Tokens and seconds of the prompt and generation phases of every ``greedy`` call so far.

    Prompt: decoding each prompt in batches of up to ``n_batch`` tokens, logits of its last position
    only (as llama.cpp's own generation does). Generation: decoding each new token alone.
    ``logits`` calls are not counted: they compute the output head at every position.
    """

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0

    @property
    def prompt_tokens_per_s(self) -> float | None:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_tokens and self.prompt_seconds > 0 else None

    @property
    def generation_tokens_per_s(self) -> float | None:
        # None where every answer ended at its first token: no token was decoded alone to time
        return self.generated_tokens / self.generation_seconds if self.generated_tokens and self.generation_seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "prompt_tokens_per_s": self.prompt_tokens_per_s,
                "generation_tokens_per_s": self.generation_tokens_per_s}


class LlamaCppModel:
    """``model_path`` (a GGUF) in llama.cpp on the CPU, with ``lora_path`` (a llama.cpp LoRA GGUF) applied.

    ``n_ctx``: the most tokens one sequence may hold (prompt + new tokens); default ``DEFAULT_N_CTX``.
    ``threads``: CPU threads for llama.cpp; default kbit's (torch's) thread count. A file llama.cpp
    cannot load raises ConfigError; a missing llama-cpp-python raises MissingDependencyError.
    """

    def __init__(self, model_path: Path, lora_path: Path | None = None, *, n_ctx: int | None = None,
                 threads: int | None = None) -> None:
        import torch

        self._lib = require()
        for path, flag in ((model_path, "FILE"), (lora_path, "--lora")):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path} does not exist; pass an existing .gguf file as {flag}")
        self.model_path, self.lora_path = Path(model_path), (Path(lora_path) if lora_path else None)
        self.threads = threads or torch.get_num_threads()
        _recent.clear()
        try:
            self._llama = self._lib.Llama(str(model_path), lora_path=str(lora_path) if lora_path else None,
                                          n_ctx=n_ctx or DEFAULT_N_CTX, n_threads=self.threads, n_threads_batch=self.threads,
                                          logits_all=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            what = f"{model_path} with the adapter {lora_path}" if lora_path else str(model_path)
            said = next((line for line in reversed(_recent) if "error loading model" in line), None) or str(exc)
            raise ConfigError(f"llama.cpp cannot load {what} ({said.split('error loading model: ')[-1]}); check that it "
                              "is a GGUF model file (and a LoRA adapter GGUF made for it)"
                              + _nearly_full(Path(model_path).parent)) from None
        self.n_ctx, self.n_vocab = self._llama.n_ctx(), self._llama.n_vocab()
        self._timing = Timing()

    @property
    def timing(self) -> Timing:
        return self._timing

    def logits(self, token_ids: Sequence[int]) -> Any:
        """(len(token_ids), n_vocab) float32 tensor: row i holds the next-token logits after ``token_ids[:i+1]``."""
        import torch

        ids = self._checked(token_ids, 0)
        self._llama.reset()  # the next eval starts at position 0 and drops the cached keys and values
        self._llama.eval(ids)
        return torch.from_numpy(self._llama.scores[: len(ids)].copy())

    def tokenize(self, text: str) -> list[int]:
        """``text`` as the file's own tokenizer (llama.cpp's) encodes it: no BOS added, special tokens parsed."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: Collection[int]) -> list[int]:
        """The greedy continuation of ``prompt_ids``: new token ids up to and including the first of
        ``stop_ids``, at most ``max_new_tokens`` of them. Ties go to the lowest id, as ``torch.argmax``."""
        import numpy as np

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is {max_new_tokens}; expected 1 or more")
        ids = self._checked(prompt_ids, max_new_tokens)
        self._clear()
        started = time.perf_counter()
        for begin in range(0, len(ids), self._llama.n_batch):
            row = self._decode(ids[begin:begin + self._llama.n_batch])
        token = int(np.argmax(row))
        prompt_s = time.perf_counter() - started
        new = [token]
        started = time.perf_counter()
        while len(new) < max_new_tokens and token not in stop_ids:
            token = int(np.argmax(self._decode([token])))
            new.append(token)
        self._timing = attrs.evolve(self._timing, prompt_tokens=self._timing.prompt_tokens + len(ids),
                                    prompt_seconds=self._timing.prompt_seconds + prompt_s,
                                    generated_tokens=self._timing.generated_tokens + len(new) - 1,
                                    generation_seconds=self._timing.generation_seconds + time.perf_counter() - started)
        return new

    def _decode(self, ids: Sequence[int]) -> Any:
        """Append ``ids`` to the sequence in the KV cache; the next-token logits after the last of them.

        ``Llama.eval`` would compute the output head at every position (``logits_all``, which
        ``logits`` needs); a batch from ``llama_batch_get_one`` asks for the last position only, as
        llama.cpp's own generation loop (examples/simple) does, so prompt speed is llama.cpp's.
        """
        import numpy as np

        lib = self._lib
        tokens = (lib.llama_token * len(ids))(*ids)
        status = lib.llama_decode(self._llama.ctx, lib.llama_batch_get_one(tokens, len(ids)))
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        return np.ctypeslib.as_array(lib.llama_get_logits_ith(self._llama.ctx, -1), shape=(self.n_vocab,)).copy()

    def _clear(self) -> None:
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._llama.ctx), True)
        self._llama.reset()  # Llama's own record of the cached tokens, which _decode bypasses

    def _checked(self, token_ids: Sequence[int], new_tokens: int) -> list[int]:
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("no token ids given")
        bad = next((t for t in ids if not 0 <= t < self.n_vocab), None)
        if bad is not None:
            raise ConfigError(f"token id {bad} is outside {self.model_path.name}'s vocabulary of {self.n_vocab}; "
                              "the file's tokenizer is not the reference model's")
        if len(ids) + new_tokens > self.n_ctx:
            raise ConfigError(f"{len(ids)} tokens + {new_tokens} new ones exceed the llama.cpp context of {self.n_ctx}; "
                              "pass a larger n_ctx")
        return ids

    def close(self) -> None:
        """Free the model, context and adapter (idempotent)."""
        llama, self._llama = getattr(self, "_llama", None), None
        if llama is not None:
            llama.close()

    def __enter__(self) -> LlamaCppModel:  # noqa: PYI034 - typing.Self needs Python 3.11; kbit supports 3.10
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()


def _nearly_full(folder: Path) -> str:
    """A hint when the disk holding a file llama.cpp could not load is (nearly) full: a file written there may be
    cut short without the writer noticing, so this is often the cause; empty otherwise."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return (f"; its disk has only {free // 1024} KiB free, so the file may be cut short: free space and write it again"
            if free < 1 << 20 else "")
