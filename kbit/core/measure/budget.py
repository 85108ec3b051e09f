"""How long an answer may be: generation stops at the end-of-turn token, under a cap that fits the task.

The cap is the user's ``--max-new-tokens`` or, by default, derived from the training completions (of a
test file scored alone: its items' own): the 95th percentile of their token lengths (the end-of-turn token
included) times 1.5, bounded to 16…1024 and to half the model's context (the prompt needs the rest).
One-number arithmetic answers get 16 tokens, a few sentences of worked solution ~100-200; a trained model
ends well before the cap, and an untrained one is cut there instead of running on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from kbit.core.data.examples import Example, TaskData
from kbit.core.errors import ConfigError

PERCENTILE = 95
FACTOR = 1.5
MIN_TOKENS, MAX_TOKENS = 16, 1024
SAMPLE = 2000  # completions measured at most (the first ones): enough for a percentile, fast on hub-sized sets
_SENTINEL = "KBIT-END-OF-ANSWER"
# No token spans more characters than this in practice: a text cut at N times it still gives N tokens, and the
# tokenizer is spared a completion of megabytes where only its first N tokens count.
CHARS_PER_TOKEN_BOUND = 64


def cut_for_tokens(text: str, tokens: int) -> str:
    """``text`` cut to the characters ``tokens`` tokens can hold at most (``CHARS_PER_TOKEN_BOUND`` each): the
    same first ``tokens`` tokens, without tokenizing the rest."""
    return text[: tokens * CHARS_PER_TOKEN_BOUND]


@attrs.frozen
class GenerationBudget:
    """The new-token cap of greedy answers, how it was chosen, and the tokens that end an answer."""

    max_new_tokens: int
    chosen_by: str  # "--max-new-tokens", "training completions" or "the held-out items' completions"
    detail: str
    stop_tokens: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "chosen_by": self.chosen_by, "detail": self.detail,
                "stop_tokens": list(self.stop_tokens)}

    def describe(self) -> str:
        stop = f"until {' or '.join(self.stop_tokens)}, " if self.stop_tokens else ""
        return f"{stop}at most {self.max_new_tokens} new tokens ({self.chosen_by}: {self.detail})"


def completion_lengths(tokenizer: Any, examples: Sequence[Example]) -> list[int]:
    """Token count of each completion plus its end-of-turn token, over the first ``SAMPLE`` examples."""
    texts = [cut_for_tokens(e.completion, 2 * MAX_TOKENS) for e in examples[:SAMPLE]]  # past the cap, length is moot
    if not texts:
        return []
    return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def derived_cap(lengths: Sequence[int]) -> tuple[int, str]:
    """The cap for completions of these token ``lengths`` and how it was computed."""
    import numpy as np

    if not lengths:
        return MIN_TOKENS, f"no completions to measure; the minimum {MIN_TOKENS}"
    # method="higher": an actual length of the data, never an interpolation below it
    percentile = int(np.percentile(np.asarray(lengths), PERCENTILE, method="higher"))
    raw = int(math.ceil(percentile * FACTOR))
    cap = min(MAX_TOKENS, max(MIN_TOKENS, raw))
    bound = "" if cap == raw else f", bounded to {MIN_TOKENS}…{MAX_TOKENS}"
    return cap, (f"{PERCENTILE}th percentile of {len(lengths)} completion lengths = {percentile} tokens "
                 f"× {FACTOR:g} = {raw}{bound}")


def end_of_turn_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS, the model's generation-config EOS
    (one id or several) and the special token the chat template writes after an assistant message."""
    found: list[int] = []
    candidates: list[Any] = [tokenizer.eos_token_id]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
    candidates.append(_template_end_id(tokenizer))
    for token in candidates:
        if isinstance(token, int) and token not in found:
            found.append(token)
    return found


def _template_end_id(tokenizer: Any) -> int | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation has no end token to learn from
        return None
    after = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(getattr(tokenizer, "all_special_ids", []) or []) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return ids[0] if ids and ids[0] in special else None


def context_length(model_config: Any) -> int | None:
    """The most positions ``model_config`` describes (``max_position_embeddings`` or its older names), or None."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits_context(explicit: int | None, model_config: Any) -> None:
    """Refuse a ``--max-new-tokens`` that reaches the model's context: greedy decoding would run on past
    the positions the model was built for, for minutes, on an answer nothing can score."""
    context = context_length(model_config)
    if explicit is not None and context is not None and explicit >= context:
        raise ConfigError(f"--max-new-tokens {explicit} reaches past the model's context of {context} tokens; "
                          f"pass a value below {context} (answers end at the end-of-turn token anyway)")


def generation_budget(tokenizer: Any, data: TaskData | Sequence[Example], explicit: int | None = None,
                      model: Any = None) -> GenerationBudget:
    """The budget for answers to a task whose training completions are ``data`` (or ``data.train``; where a
    ``TaskData`` has no training rows, a file scored alone, its held-out items' completions): ``explicit`` wins;
    ``ConfigError`` where it reaches past ``model``'s context."""
    stops = tuple(tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer, model))
    if explicit is not None:
        check_fits_context(explicit, getattr(model, "config", None))
        return GenerationBudget(int(explicit), "--max-new-tokens", "set by the user", stops)
    completions, chosen_by = data, "training completions"
    if isinstance(data, TaskData):
        completions = data.train or data.held_out
        chosen_by = "training completions" if data.train else "the held-out items' completions"
    cap, detail = derived_cap(completion_lengths(tokenizer, completions))
    context = context_length(getattr(model, "config", None))
    if context is not None and cap > context // 2:  # the prompt needs the rest of the context
        cap, detail = max(1, context // 2), f"{detail}, bounded to half the model's context of {context} tokens"
    return GenerationBudget(cap, chosen_by, detail, stops)
