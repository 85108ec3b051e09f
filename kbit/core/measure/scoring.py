"""Answer scoring: math answers (arithmetic, openmath) by value, SQuAD exact match / token F1.

Only the answer counts. ``final_answer`` first finds the span of a math prediction that states its
final answer: the last ``\\boxed{}``, else in the last statement that holds a number the text after
its last "=" (a chain "59 + 63 = 122" answers 122), else after "answer is", else its last number or
expression. A span that is still an arithmetic expression of numbers ("59 + 63", an echo of the
question) is no answer, unless the gold is one too. Only then is the span compared with the gold by
value, with ``math-verify`` (Hugging Face's verifier: it parses LaTeX — ``\\frac{1}{2}``, ``0.5``,
``50\\%``, ``12\\text{ cm}``, ``1,000`` — into sympy and compares values; writing that parser ourselves
would be a worse copy). math-verify is not handed the whole prediction: its extraction
(``ExprExtractionConfig``) reads "59 + 63" as an expression and sympy evaluates it to 122, and none of
its options (anchors only, boxed priority) refuses an unevaluated expression or picks the last
statement. Where math-verify is not installed or parses nothing in the gold or the span, the plain
rule decides: the span compared as a number.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import string
import threading
from typing import Any

_NUMBER = r"(?:\d+(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
_OPERATOR = r"[-+*/^×÷−]"
# A number, or numbers joined by operators ("59 + 63", "(3 + 4) * 2"), with its sign and percent sign.
_MATH_RUN = re.compile(rf"[-−]?\(*\s*(?:{_NUMBER})(?:\s*\)*\s*{_OPERATOR}\s*\(*\s*[-−]?(?:{_NUMBER}))*\s*\)*(?:\s*%)?")
_LATEX_MATH = re.compile(r"\$\$?(.+?)\$\$?|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_STATEMENT_END = re.compile(r"(?<=[.!?])\s+|\n+")
_EQUALS = re.compile(r"(?<![<>!=\\])=(?!=)")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_BOXED = "\\boxed{"
MATH_TASKS = ("arithmetic", "openmath")
PLAIN_RULE = "the final answer (last \\boxed{}, else after the last '=' or 'answer is', else the last number), compared as a number"


def final_answer(text: str) -> str | None:
    """The span of ``text`` that states its final answer (see the module docs), or None where it states
    none: no number at all, or nothing after a closing "=" ("59 + 63 =")."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return _after_equals(boxed)
    statement = next((s for s in reversed(_STATEMENT_END.split(text)) if re.search(r"\d", s)), None)
    if statement is None:
        return None
    anchors = [m.end() for m in (*_EQUALS.finditer(statement), *_ANSWER_IS.finditer(statement))]
    if anchors:  # the first value after the last "=" or "answer is" of the statement
        return _math_item(statement[max(anchors):], last=False)
    return _math_item(statement, last=True)


def _last_boxed(text: str) -> str | None:
    """The content of the last closed ``\\boxed{...}`` (nested braces included)."""
    start = text.rfind(_BOXED)
    while start != -1:
        depth, begin = 1, start + len(_BOXED)
        for end in range(begin, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[begin:end].strip()
        start = text.rfind(_BOXED, 0, start)  # cut off before it closed: the one before it
    return None


def _after_equals(span: str) -> str | None:
    tail = _EQUALS.split(span)[-1].strip()
    return tail if re.search(r"\d", tail) else None


def _math_item(region: str, last: bool) -> str | None:
    """The first (or last) value in ``region``: a LaTeX math span's content, bare LaTeX, or a math run."""
    items = [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _LATEX_MATH.finditer(region)]
    outside = _LATEX_MATH.sub(lambda m: " " * len(m.group(0)), region)
    bare = re.match(r"\s*(\\[a-zA-Z].*?)\s*(?:\$|\\\)|\\\])?\s*[.,;]?\s*$", outside)
    if bare and not items:  # "\dfrac{3}{4}" after "answer is", with no $ around it
        items.append((bare.start(1), bare.end(1), bare.group(1)))
    items += [(m.start(), m.end(), m.group(0)) for m in _MATH_RUN.finditer(outside)]
    items = [item for item in items if re.search(r"\d", item[2])]
    if not items:
        return None
    chosen = max(items, key=lambda i: i[1]) if last else min(items, key=lambda i: i[0])
    return _after_equals(chosen[2])


def is_unevaluated(span: str) -> bool:
    """Whether ``span`` is an arithmetic expression of two or more plain numbers ("59 + 63", "2^{10}",
    "3 \\times 4"), not a value; a lone fraction ("1/2", ``\\frac{1}{2}``) and a negative number are values."""
    plain = re.sub(r"\\(?:left|right|,|;|!| )", "", span)
    plain = re.sub(r"\\(?:times|cdot|div)", "*", plain).replace("{", "(").replace("}", ")").strip().rstrip(".")
    if not re.fullmatch(r"[\d.,\s()+\-*/^×÷−]+", plain):
        return False  # words, units, percent or LaTeX left: math-verify reads it
    numbers = re.findall(_NUMBER, plain)
    if len(numbers) < 2 or re.fullmatch(rf"\s*[-−]?\s*(?:{_NUMBER})\s*/\s*(?:{_NUMBER})\s*", plain):
        return False
    return re.search(rf"(?:{_NUMBER})\s*\)*\s*{_OPERATOR}", plain) is not None


def _canonical_number(text: str) -> str:
    cleaned = text.strip().replace(",", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return cleaned
    return str(int(value)) if value.is_integer() else repr(value)


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


def math_verify_match(answer: str, gold: str) -> bool | None:
    """math-verify's verdict on the answer span ``answer`` (``final_answer``'s) against ``gold``; None
    when it is absent or parses nothing."""
    module = _math_verify()
    if module is None:
        return None
    # Its time limits use SIGALRM, which only the main thread may set; elsewhere they are switched off.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    gold_text = gold if ("\\boxed" in gold or "$" in gold) else f"\\boxed{{{gold}}}"
    answer_text = f"\\boxed{{{answer}}}"  # as the gold: a bare "\\dfrac{3}{4}" or "2^{10}" is not read as LaTeX
    parsed_gold = module.parse(gold_text, parsing_timeout=limit)
    parsed_answer = module.parse(answer_text, parsing_timeout=limit)
    if not parsed_gold or not parsed_answer:
        return None
    return bool(module.verify(parsed_gold, parsed_answer, timeout_seconds=limit))


def math_exact_match(prediction: str, gold: str) -> bool:
    """``prediction``'s final answer states ``gold``'s value: math-verify where it parses both, else the
    plain rule. An answer that is still an expression of numbers is not credited with its value."""
    answer = final_answer(prediction)
    if answer is None or (is_unevaluated(answer) and not is_unevaluated(gold)):
        return False
    verdict = math_verify_match(answer, gold)
    if verdict is None:  # the plain rule
        return _canonical_number(answer) == _canonical_number(gold)
    return verdict


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
