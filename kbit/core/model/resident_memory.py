"""Giving back what loading a model leaves resident beyond the model's own weights.

**Reading a quantized checkpoint.** transformers maps each safetensors file into memory and reads the
tensors from the map. For a quantized load almost every page read is full-precision weight that is
quantized and never used again, yet it stays resident until the map goes: loading SmolLM2-135M in
4 bits peaked with the whole 514 MB float32 file resident beside the quantized model. safetensors'
``pread`` backend (what transformers itself uses on Windows and MPS) reads each tensor into its own
buffer, freed once quantized. transformers offers no switch for it on Linux (``disable_mmap`` reads
whole files into memory first, a higher peak), so ``reading_tensors_one_by_one`` asks for it on the
``safe_open`` calls of one ``from_pretrained``.

**The checkpoint's memory map, after an unquantized load.** An unquantized load keeps every tensor
whose dtype matches the file as a view of the map. When ``quantize_base`` (qalora, or a plugin
made by ``kbit new-method``) then replaces the linear weights, the few views left (embeddings,
norms) keep the whole map, and every page of it loading read, alive. ``release_checkpoint_mappings`` copies those views when they cover
less than half of their file, so the map goes.

**Freed heap.** Loading and quantizing allocate many temporary full-precision tensors of a few MB; glibc
keeps the heap pages they freed (its mmap threshold rises to 32 MB after the first large free), ~140 MB
for SmolLM2. ``malloc_trim`` hands them back.

The last two are Linux/glibc only (``/proc/self/maps``, ``malloc_trim``); elsewhere they do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAPS = Path("/proc/self/maps")
# Copy the views only when they cover less than this share of the mapped files: then most mapped pages
# are dead weight. An unquantized model whose weights are all views gains nothing from copies.
RELEASE_BELOW = 0.5


@contextlib.contextmanager
def reading_tensors_one_by_one() -> Iterator[None]:
    """Within this block, transformers opens safetensors checkpoints with the ``pread`` backend.

    Only the loading thread's ``from_pretrained`` should run inside it (the switch is module-wide).
    Where transformers no longer opens files through ``transformers.modeling_utils.safe_open``, this
    does nothing and loading maps the files as before (``release_checkpoint_mappings`` still applies).
    """
    import transformers.modeling_utils as loader

    original = getattr(loader, "safe_open", None)
    if original is None:
        yield
        return

    def open_with_pread(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("backend", "mmap") == "mmap":
            kwargs["backend"] = "pread"
        return original(*args, **kwargs)

    loader.safe_open = open_with_pread
    try:
        yield
    finally:
        loader.safe_open = original


def checkpoint_mappings(maps_text: str) -> list[tuple[int, int]]:
    """Address ranges of the ``*.safetensors`` files mapped into this process (``/proc/self/maps`` text)."""
    ranges = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip().endswith(".safetensors"):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def release_checkpoint_mappings(model: Any, maps_text: str | None = None) -> int:
    """Copy the parameters and buffers of ``model`` that are views of a mapped checkpoint file, for each
    file whose views cover less than ``RELEASE_BELOW`` of its mapped bytes; returns the bytes copied.

    Only ``.data`` changes, so parameter identity (tied weights, hooks, optimizer references) is kept,
    and a tensor shared by two names is copied once.
    """
    if maps_text is None:
        try:
            maps_text = MAPS.read_text()
        except OSError:
            return 0
    views: dict[tuple[int, int], dict[int, Any]] = {mapping: {} for mapping in checkpoint_mappings(maps_text)}
    if not views:
        return 0
    for tensor in (*model.parameters(), *model.buffers()):
        pointer = tensor.data_ptr()
        for (start, end), inside in views.items():
            if start <= pointer < end:
                inside.setdefault(id(tensor), tensor)
    copied = 0
    for (start, end), inside in views.items():
        covered = sum(t.numel() * t.element_size() for t in inside.values())
        if covered >= RELEASE_BELOW * (end - start):
            continue
        for tensor in inside.values():
            tensor.data = tensor.data.clone()
        copied += covered
    return copied


def trim_heap() -> bool:
    """Collect garbage and return the C heap's free pages to the OS; False where there is no glibc."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def release_load_memory(model: Any) -> None:
    """``release_checkpoint_mappings`` then ``trim_heap``: called once a model is loaded (and quantized)."""
    release_checkpoint_mappings(model)
    trim_heap()
