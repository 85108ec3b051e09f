"""Measuring a GGUF candidate in llama.cpp (``kbit eval FILE.gguf [--lora ADAPTER.gguf]``).

The same measurements as in torch where they mean the same thing — greedy answers to the end of turn
under the answer budget (scored by the pipeline), completion loss over completion tokens — plus
llama.cpp's prompt and generation speed (``LlamaCppModel.timing``: one sequence at a time, after a
warm-up) and, with a reference, the agreement figures (``kbit.core.evaluate.reference``). Token ids
come from the file's tokenizer (its converted folder, as the user's prompts would be tokenized);
bits per weight are the file's as stored; memory is not measured here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs

from kbit.core.data import TaskData
from kbit.core.system.device import DeviceInfo
from kbit.core.measure.budget import context_length, end_of_turn_ids, generation_budget
from kbit.core.measure.generation import Answers, render_prompt
from kbit.core.evaluate.loading import Candidate
from kbit.core.measure.metrics import context_cut, encode_example, gguf_linear_bits
from kbit.core.evaluate.pipeline import Measured
from kbit.core.model.check import load_config
from kbit.core.model.sources import ModelSource, load_tokenizer
from kbit.core.runtime.llama_cpp import LlamaCppModel, Timing


def measure_in_llama_cpp(candidate: Candidate, data: TaskData, items: Sequence[Any], max_new_tokens: int | None,
                         device: DeviceInfo) -> Measured:
    """Run ``candidate.gguf`` (with ``candidate.lora``) in llama.cpp on ``items``: what it measured."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(ModelSource(path=candidate.tokenizer_path, name=candidate.label, origin="local"))
    from kbit.core.evaluate.pipeline import announce

    announce(candidate, data, items)
    holder = SimpleNamespace(generation_config=_generation_config(candidate.path))  # what end_of_turn_ids reads
    stops = end_of_turn_ids(tokenizer, holder)
    budget = generation_budget(tokenizer, data, max_new_tokens, holder)
    prompts = [tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"] for e in items]
    limit = context_length(load_config(candidate.path))
    sequences = [encode_example(tokenizer, e, limit) for e in items]
    n_ctx = max(max(map(len, prompts)) + budget.max_new_tokens, max(len(ids) for ids, _ in sequences))
    with LlamaCppModel(Path(candidate.gguf), Path(candidate.lora) if candidate.lora else None, n_ctx=n_ctx) as model:
        load_s = time.perf_counter() - started
        model.greedy(prompts[0], 2, stops)  # warm-up: the first decode allocates llama.cpp's compute graph
        warm = model.timing
        answers = greedy_answers(model, tokenizer, prompts, budget.max_new_tokens, stops)
        speed = _since(warm, model.timing)
        loss = {**_completion_loss(model, sequences), **context_cut(sequences, limit)}
        agreement: dict[str, Any] = {}
        if candidate.reference is not None:
            from kbit.core.evaluate.reference import reference_agreement

            agreement = reference_agreement(candidate.reference, model.logits, items, device)
    return Measured(answers, loss, budget, {
        **gguf_linear_bits(candidate.gguf),  # as the file stores them; memory is llama.cpp's own, not measured here
        "prompt_tokens_per_s": speed.prompt_tokens_per_s,
        "generation_tokens_per_s": speed.generation_tokens_per_s,
        "speed": {**speed.to_dict(), "threads": model.threads},
        **agreement,
        "llama_cpp": _version(),
        "load_s": round(load_s, 2),
        "eval_s": round(time.perf_counter() - started - load_s, 2),
    })


def greedy_answers(model: LlamaCppModel, tokenizer: Any, prompts: Sequence[list[int]], max_new_tokens: int,
             stops: Collection[int]) -> Answers:
    """Greedy answers as ``generate_answers`` gives them: text before the first stop token, lengths with it."""
    texts, lengths, cut = [], [], 0
    started = time.perf_counter()
    for prompt in prompts:
        new = model.greedy(prompt, max_new_tokens, stops)
        ended = next((i for i, token in enumerate(new) if token in stops), None)
        lengths.append(len(new))
        cut += ended is None and len(new) >= max_new_tokens
        texts.append(tokenizer.decode(new[:ended], skip_special_tokens=True).strip())
    return Answers(texts, lengths, cut, max_new_tokens, time.perf_counter() - started)


def _completion_loss(model: LlamaCppModel, sequences: Sequence[tuple[list[int], int]]) -> dict[str, Any]:
    """``completion_loss``'s figures from llama.cpp's logits: mean cross-entropy over completion tokens."""
    import torch

    total, tokens, per_example = 0.0, 0, []
    for ids, prompt_length in sequences:
        logits = model.logits(ids)[prompt_length - 1:len(ids) - 1]
        losses = torch.nn.functional.cross_entropy(logits.double(), torch.tensor(ids[prompt_length:]), reduction="none")
        per_example.append(float(losses.mean()) if len(losses) else float("nan"))
        total += float(losses.sum())
        tokens += len(losses)
    loss = total / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens and loss < 700 else float("inf"),
            "tokens": tokens, "input_tokens": sum(len(ids) for ids, _ in sequences), "per_example": per_example}


def _since(before: Timing, after: Timing) -> Timing:
    return Timing(*(getattr(after, f.name) - getattr(before, f.name) for f in attrs.fields(Timing)))


def _generation_config(folder: str) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:  # none saved: the tokenizer's end-of-turn tokens alone
        return None


def _version() -> str:
    from importlib.metadata import version

    return f"llama-cpp-python {version('llama_cpp_python')}"
