"""Answer scoring: math answers (arithmetic, openmath) by value, SQuAD exact match / token F1.

Math answers are compared with ``math-verify`` (Hugging Face's verifier: it reads the final
``\\boxed{}`` or number of a solution, parses LaTeX — ``\\frac{1}{2}``, ``0.5``, ``50\\%``, ``12\\text{ cm}``,
``1,000`` — into sympy and compares values). Writing that parser ourselves would be a worse copy.
Where math-verify is not installed or finds nothing to parse in the gold or the prediction, the
plain rule decides: the last ``\\boxed{}`` content, else the last number, compared as a number.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import string
import threading
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
MATH_TASKS = ("arithmetic", "openmath")
PLAIN_RULE = "last \\boxed{} or number, compared as a number"


def final_answer(text: str) -> str | None:
    """The final answer in ``text``: the last ``\\boxed{}`` content, else the last number; None if neither."""
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _canonical_number(text: str) -> str:
    cleaned = text.strip().replace(",", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return str(int(value)) if value.is_integer() else repr(value)


def numeric_exact_match(prediction: str, gold: str) -> bool:
    """The plain rule: the final answer of ``prediction`` equals ``gold`` (numbers compared by value)."""
    answer = final_answer(prediction)
    return answer is not None and _canonical_number(answer) == _canonical_number(gold)


@functools.lru_cache(maxsize=1)
def _math_verify() -> Any:
    """The ``math_verify`` module, or None when it is not installed (then the plain rule scores)."""
    try:
        import math_verify
    except ImportError:
        return None
    # It logs every unparsable prediction at WARNING ("Timeout during parsing", "Error parsing");
    # a model's half-finished answer is expected here, and kbit records the outcome as the score.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


def math_scorer() -> str:
    """What compares math answers in this environment, for reports: ``math-verify X.Y`` or the plain rule."""
    module = _math_verify()
    if module is None:
        return f"plain rule ({PLAIN_RULE}); math-verify is not installed"
    from importlib.metadata import version

    return f"math-verify {version('math-verify')} (fallback: {PLAIN_RULE})"


def math_verify_match(prediction: str, gold: str) -> bool | None:
    """math-verify's verdict on ``prediction`` against ``gold``; None when it is absent or parses nothing."""
    module = _math_verify()
    if module is None:
        return None
    # Its time limits use SIGALRM, which only the main thread may set; elsewhere they are switched off.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    gold_text = gold if ("\\boxed" in gold or "$" in gold) else f"\\boxed{{{gold}}}"
    parsed_gold = module.parse(gold_text, parsing_timeout=limit)
    parsed_prediction = module.parse(prediction, parsing_timeout=limit)
    if not parsed_gold or not parsed_prediction:
        return None
    return bool(module.verify(parsed_gold, parsed_prediction, timeout_seconds=limit))


def math_exact_match(prediction: str, gold: str) -> bool:
    """``prediction`` states ``gold``'s value: math-verify where it parses both, else the plain rule."""
    verdict = math_verify_match(prediction, gold)
    return numeric_exact_match(prediction, gold) if verdict is None else verdict


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, golds: list[str]) -> bool:
    return any(normalize_answer(prediction) == normalize_answer(g) for g in golds)


def squad_f1(prediction: str, golds: list[str]) -> float:
    """The best token-level F1 of ``prediction`` against any of ``golds`` (SQuAD v1.1 definition)."""
    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        common = collections.Counter(p) & collections.Counter(g)
        same = sum(common.values())
        if not p or not g:
            return float(p == g)
        if same == 0:
            return 0.0
        precision, recall = same / len(p), same / len(g)
        return 2 * precision * recall / (precision + recall)

    return max((f1(prediction, g) for g in golds), default=0.0)


def score(task: str, prediction: str, answers: list[str]) -> dict[str, float]:
    """Per-example scores for ``task``: {"exact_match": 0/1} plus {"f1": …} for squad."""
    if task in MATH_TASKS:
        return {"exact_match": float(bool(answers) and math_exact_match(prediction, answers[0]))}
    if task == "squad":
        return {"exact_match": float(squad_exact_match(prediction, answers)), "f1": squad_f1(prediction, answers)}
    return {"exact_match": float(any(prediction.strip() == a.strip() for a in answers))}
