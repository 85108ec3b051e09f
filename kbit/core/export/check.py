"""Check a GGUF file — or a LoRA adapter GGUF applied to its base file — against the model it must
equal, on held-out items, in the runtime people deploy it with; out of range fails.

The runtime (``runtime``): ``llama.cpp`` (llama-cpp-python, the extra ``kbit[llama-cpp]``) runs the
file as users run it, activation rounding of its quantized matmuls and f16 KV cache included;
``transformers`` loads it with transformers' GGUF reader (dequantized to float32); ``auto`` is
llama.cpp where installed. The figures name the runtime that produced them. A LoRA GGUF is applied to
its base file by llama.cpp itself, or read back onto transformers' float model of that file
(:func:`kbit.core.export.lora_gguf.apply_lora_gguf`).

Against the reference (a model folder, or the run's trained adapter model in memory), on the same
token ids (each item's prompt + answer + EOS as the reference's tokenizer encodes it):

- tokenizer: the file's tokenizer must encode every item's text into the reference's ids;
- logits (:func:`kbit.core.measure.agreement.agreement`): mean KL divergence on the answer positions
  (what greedy answers depend on), top-1 agreement there (plain and within near-ties: a top token the
  reference rates within ``NEAR_TIE`` nats of its own counts as agreeing), on every position, |Δlogit|;
  a NaN or infinity fails;
- held-out exact match of greedy answers, each side on its own runtime.

Gated (``GATES``; override with ``--max-kl`` / ``--max-em-drop``): the answer-token KL, and for f16,
bf16 and q8_0, which are meant to be lossless in use, the KL on every token too (a fine-tuned model
answers so confidently that a damaged tensor shows mostly elsewhere) and an exact-match drop of at
most two points. Top-1
is reported, not gated (``--min-top1`` gates it): which of two nearly tied tokens wins is rounding
noise, and an honest q8_0 of an unfine-tuned base flips a few percent of its answer tokens. The KL
bounds are set between honest files and files with one damaged tensor, measured in llama.cpp
(``benchmarks/export_gate.py``; figures in BENCHMARKS.md, "Issue 27"). q5_*/q4_* round to 32/16 levels
per block, which an untrained base feels strongly: their bounds catch a file written wrong, not the
rounding itself, whose exact-match change is reported.
"""

from __future__ import annotations

import contextlib

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from kbit.core.errors import ConfigError, FidelityError
from kbit.core.measure.agreement import NEAR_TIE, Agreement, agreement

# type: (largest mean KL divergence on answer tokens, in nats; largest exact-match drop): see the module docs.
GATES = {
    "f16": (0.03, 0.02), "bf16": (0.03, 0.02), "q8_0": (0.03, 0.02),
    "q5_0": (0.5, None), "q5_1": (0.5, None),
    "q4_0": (1.0, None), "q4_1": (1.0, None), "mxfp4": (1.0, None),
    "tq2_0": (2.0, None),  # ternary: a float model loses much more; a model trained through it (qat) does not
}
LOSSLESS = ("f16", "bf16", "q8_0")  # their KL bound holds on every position too, not only on answer tokens
RUNTIMES = ("auto", "llama.cpp", "transformers")


@attrs.frozen
class Gate:
    """The bounds a file must meet: mean KL divergence from the reference on answer tokens at most
    ``max_kl`` (and on every token at most ``max_kl_all``); exact match at most ``max_em_drop`` below the reference's; top-1 agreement within
    near-ties at least ``min_top1``. None: reported, not gated (top-1 by default: which of two nearly
    tied tokens wins is rounding noise, not damage)."""

    max_kl: float | None = None
    max_em_drop: float | None = None
    min_top1: float | None = None
    max_kl_all: float | None = None

    @classmethod
    def for_type(cls, file_type: str, max_kl: float | None = None, max_em_drop: float | None = None,
                 min_top1: float | None = None) -> Gate:
        kl, drop = GATES[file_type]
        kl = kl if max_kl is None else max_kl
        return cls(kl, drop if max_em_drop is None else max_em_drop, min_top1, kl if file_type in LOSSLESS else None)

    def allowed_em_drop(self, items: int | None) -> float | None:
        """The exact-match drop allowed on ``items`` answers: ``max_em_drop``, and always one answer (on 10 items one
        rounding flip, which the KL bound already judges, is 10 points)."""
        if self.max_em_drop is None or not items:
            return self.max_em_drop
        return max(self.max_em_drop, 1 / items)

    def describe(self, items: int | None = None) -> str:
        """The bounds in words; with ``items``, the exact-match drop as it was applied to that many answers."""
        drop = self.allowed_em_drop(items)
        drop_text = "" if drop is None else f"exact match drop ≤ {self.max_em_drop * 100:g} points" + (
            f" (on {items} items: one answer, {drop * 100:.3g} points)" if drop != self.max_em_drop else "")
        parts = [f"answer KL ≤ {self.max_kl:g}" if self.max_kl is not None else "",
                 f"KL on every token ≤ {self.max_kl_all:g}" if self.max_kl_all is not None else "",
                 drop_text,
                 f"top-1 ≥ {self.min_top1:.0%}" if self.min_top1 is not None else ""]
        return ", ".join(part for part in parts if part) or "no bound"


@attrs.frozen
class Reference:
    """The model a file must equal: a loaded transformers model, its tokenizer and, when already measured
    on these very items under the same budget, its exact match (generation is the slow part)."""

    model: Any
    tokenizer: Any
    exact_match: float | None = None


def resolve_runtime(runtime: str) -> str:
    """``auto`` → llama.cpp where llama-cpp-python is installed, else transformers."""
    from kbit.core.runtime.llama_cpp import INSTALL, installed

    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime '{runtime}'; choose from {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "llama.cpp" if installed() else "transformers"
    if runtime == "llama.cpp" and not installed():
        from kbit.core.errors import MissingDependencyError

        raise MissingDependencyError(f"checking in llama.cpp needs llama-cpp-python: {INSTALL}")
    return runtime


def check_gguf(gguf_path: Path, source_dir: Path, task: str, examples: Sequence[Any], gate: Gate,
               max_new_tokens: int = 16, source_exact_match: float | None = None,
               runtime: str = "auto") -> dict[str, Any]:
    """Compare ``gguf_path`` with the model folder ``source_dir`` on ``examples`` (see the module docs)."""
    from kbit.core.model.sources import ModelSource, load_causal_lm, load_tokenizer

    source = load_causal_lm(str(source_dir), dtype="float32").eval()
    tokenizer = load_tokenizer(ModelSource(path=str(source_dir), name=Path(source_dir).name, origin="local"))
    return check_file(Path(gguf_path), Reference(source, tokenizer, source_exact_match), task, examples, gate,
                      max_new_tokens, runtime=runtime)


def check_file(gguf_path: Path, reference: Reference, task: str, examples: Sequence[Any], gate: Gate,
               max_new_tokens: int = 16, *, lora: Path | None = None, runtime: str = "auto") -> dict[str, Any]:
    """Compare ``gguf_path`` (with the LoRA GGUF ``lora`` applied) with ``reference`` on ``examples``.

    Returns the figures (``runtime`` names where the file ran; ``source`` holds the reference's exact
    match); raises FidelityError naming every bound missed.
    """
    from kbit.core.measure.budget import context_length
    from kbit.core.measure.metrics import encode_example, example_text
    from kbit.core.evaluate.reference import answer_mask, torch_logits

    started = time.time()
    items = list(examples)
    if not items:
        raise FidelityError("no held-out examples to check the file against; the run's dataset has none")
    runtime = resolve_runtime(runtime)
    if reference.tokenizer.pad_token is None:
        reference.tokenizer.pad_token = reference.tokenizer.eos_token
    limit = context_length(reference.model.config)
    sequences = [encode_example(reference.tokenizer, e, limit) for e in items]
    with _candidate(gguf_path, lora, runtime, reference, sequences, max_new_tokens) as candidate:
        mismatched = [i for i, e in enumerate(items)
                      if candidate.encode(example_text(reference.tokenizer, e, limit)[1])[:limit] != sequences[i][0]]
        if mismatched:
            raise FidelityError(f"the GGUF's tokenizer encodes {len(mismatched)} of {len(items)} held-out items differently "
                                f"from the model's (first: item {mismatched[0] + 1}); the file was not kept")
        reference_logits = torch_logits(reference.model)
        with _as_runtime(reference.model, runtime):
            figures = agreement((reference_logits(ids), candidate.logits(ids), answer_mask(len(ids), prompt))
                                for ids, prompt in sequences)
        candidate_em = _exact_match(candidate.answers(items, max_new_tokens), task, items)
    reference_em = reference.exact_match
    if reference_em is None:
        with _as_runtime(reference.model, runtime):
            reference_em = exact_match(reference.model, reference.tokenizer, task, items, max_new_tokens)
    result = {**_entry_figures(figures), "runtime": runtime, "items": len(items), "exact_match": candidate_em,
              "source": {"exact_match": reference_em}, "gate": attrs.asdict(gate),
              "check_seconds": round(time.time() - started, 1)}
    failures = failures_of(result, gate)
    if failures:
        shown = "; ".join(part for part in (
            f"mean KL {result['answer_kl']:.3g}" if result["answer_kl"] is not None else "",
            f"top-1 {result['top1_agreement_within_ties']:.1%} counting near-ties"
            if result["top1_agreement_within_ties"] is not None else "") if part)
        raise FidelityError(f"check in {runtime} failed on {len(items)} held-out items: {'; '.join(failures)}"
                            f"{f' ({shown} on answer tokens)' if shown else ''}; the file was not kept")
    return result


def _as_runtime(model: Any, runtime: str) -> Any:
    """A context in which ``model`` computes as ``runtime`` does: without llama.cpp's activation
    rounding (``exact_activations``) when the file runs in transformers' float reader."""
    from kbit.core.model.quantized_linear import exact_activations

    return exact_activations(model) if runtime == "transformers" else contextlib.nullcontext()


def failures_of(figures: Mapping[str, Any], gate: Gate) -> list[str]:
    """Every bound of ``gate`` that a file's recorded ``figures`` (an export entry: ``answer_kl``,
    ``exact_match``, ``source.exact_match`` …) miss, each as a phrase; a NaN or infinity always fails."""
    failures = []
    if figures["nonfinite_positions"]:
        failures.append(f"{figures['nonfinite_positions']} of {figures['positions']} positions give NaN or infinite logits")
    kl = figures["answer_kl"]
    if gate.max_kl is not None and kl is not None and not kl <= gate.max_kl:
        failures.append(f"mean KL divergence {kl:.4g} nats > {gate.max_kl:g} (--max-kl) on {figures['answer_positions']} "
                        "answer tokens")
    every = figures["kl"]
    if gate.max_kl_all is not None and every is not None and not every <= gate.max_kl_all:
        failures.append(f"mean KL divergence {every:.4g} nats > {gate.max_kl_all:g} (--max-kl) on all {figures['positions']} "
                        "tokens")
    top1 = figures["top1_agreement_within_ties"]
    if gate.min_top1 is not None and top1 is not None and top1 < gate.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} < {gate.min_top1:.2%} (--min-top1) on {figures['answer_positions']} "
                        f"answer tokens (a near-tie counted as agreeing)")
    reference_em, candidate_em = figures["source"]["exact_match"], figures["exact_match"]
    allowed = gate.allowed_em_drop(figures.get("items"))
    if allowed is not None and reference_em - candidate_em > allowed + 1e-9:
        failures.append(f"held-out exact match {candidate_em:.1%} is {100 * (reference_em - candidate_em):.1f} points below "
                        f"the source's {reference_em:.1%} (allowed {100 * allowed:.3g}: --max-em-drop, and at least one "
                        f"answer of {figures['items']})")
    return failures


def _entry_figures(figures: Agreement) -> dict[str, Any]:
    """The figures as an export entry records them (the names kbit.json has used since 0.2)."""
    return {"top1_agreement": figures.answer_top1, "answer_positions": figures.answer_positions,
            "top1_agreement_within_ties": figures.answer_top1_within_ties,
            "near_tie_flips": figures.near_tie_flips, "near_tie_nats": NEAR_TIE,
            "top1_agreement_all_positions": figures.same_top_p, "positions": figures.positions,
            "kl": figures.kl, "answer_kl": figures.answer_kl, "nonfinite_positions": figures.nonfinite_positions,
            "max_abs_logit_diff": figures.max_abs_logit_diff, "mean_abs_logit_diff": figures.mean_abs_logit_diff}


@attrs.frozen
class _Candidate:
    """The file as one runtime computes it: ``encode(text)``, ``logits(ids)``, ``answers(items, max_new_tokens)``."""

    encode: Any
    logits: Any
    answers: Any


@contextmanager
def _candidate(gguf_path: Path, lora: Path | None, runtime: str, reference: Reference, sequences: Sequence[tuple[list[int], int]],
               max_new_tokens: int) -> Iterator[_Candidate]:
    if runtime == "transformers":
        from kbit.core.measure.generation import generate_answers
        from kbit.core.evaluate.reference import torch_logits
        from kbit.core.model.sources import load_gguf

        model, tokenizer = load_gguf(gguf_path)
        if lora is not None:
            from kbit.core.export.lora_gguf import apply_lora_gguf

            model = apply_lora_gguf(model, lora, gguf_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        yield _Candidate(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], torch_logits(model),
                         lambda items, n: generate_answers(model, tokenizer, items, max_new_tokens=n).texts)
        return
    from kbit.core.runtime.llama_cpp import LlamaCppModel

    longest = max(len(ids) for ids, _ in sequences)
    with LlamaCppModel(gguf_path, lora, n_ctx=longest + max_new_tokens) as model:
        yield _Candidate(model.tokenize, model.logits, lambda items, n: _llama_answers(model, reference, items, n))


def _llama_answers(model: Any, reference: Reference, items: Sequence[Any], max_new_tokens: int) -> list[str]:
    """Greedy answers in llama.cpp, cut at the end of turn and decoded as ``generate_answers`` does. The
    reference's tokenizer renders and decodes: the check above made sure it encodes as the file's."""
    from kbit.core.measure.budget import end_of_turn_ids
    from kbit.core.measure.generation import render_prompt
    from kbit.core.evaluate.in_llama_cpp import greedy_answers

    tokenizer = reference.tokenizer
    prompts = [tokenizer(render_prompt(tokenizer, e), add_special_tokens=False)["input_ids"] for e in items]
    return greedy_answers(model, tokenizer, prompts, max_new_tokens, end_of_turn_ids(tokenizer, reference.model)).texts


def _exact_match(predictions: Sequence[str], task: str, items: Sequence[Any]) -> float:
    """The exact match ``task_scores`` gives, the one scorer of every held-out figure kbit prints."""
    from kbit.core.measure.metrics import task_scores

    return task_scores(task, predictions, items)[1]["exact_match"]


def exact_match(model: Any, tokenizer: Any, task: str, items: Sequence[Any], max_new_tokens: int) -> float:
    """Held-out exact match of ``model``'s greedy answers (transformers)."""
    from kbit.core.measure.generation import generate_answers

    return _exact_match(generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens).texts, task, items)
