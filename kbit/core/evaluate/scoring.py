"""Answer scoring: numeric exact match (arithmetic, openmath) and SQuAD exact match / token F1."""

from __future__ import annotations

import collections
import re
import string

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


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
    """True when the final answer of ``prediction`` equals ``gold`` (numbers compared by value)."""
    answer = final_answer(prediction)
    return answer is not None and _canonical_number(answer) == _canonical_number(gold)


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
    if task in ("arithmetic", "openmath"):
        return {"exact_match": float(bool(answers) and numeric_exact_match(prediction, answers[0]))}
    if task == "squad":
        return {"exact_match": float(squad_exact_match(prediction, answers)), "f1": squad_f1(prediction, answers)}
    return {"exact_match": float(any(prediction.strip() == a.strip() for a in answers))}
