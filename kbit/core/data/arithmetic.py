"""The embedded default dataset: seeded two-number arithmetic questions with a disjoint held-out split."""

from __future__ import annotations

import random

from kbit.core.data.examples import Example, TaskData

NAME = "arith"


OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}
DEFAULT_OPERATIONS = ("+",)
"""Two-digit addition alone is what SmolLM2-135M learns well within the default CPU budget: measured
after 100 qlora steps, addition reached 86% held-out exact match while subtraction with borrows
stayed at 41% (see the closing note of the training issue)."""


def _question(rng: random.Random, operations: tuple[str, ...]) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice(operations)
    if op == "-":
        a, b = max(a, b), min(a, b)
    return f"What is {a} {op} {b}?", str(OPERATIONS[op](a, b))


def distinct_questions(operations: tuple[str, ...] = DEFAULT_OPERATIONS) -> int:
    """How many different questions ``_question`` can ask with ``operations`` (8,100 for addition alone)."""
    count = 0
    for op in set(operations):
        pairs = {(max(a, b), min(a, b)) if op == "-" else (a, b) for a in range(10, 100) for b in range(10, 100)}
        count += len(pairs)
    return count


def generate(train_size: int = 2000, held_out_size: int = 100, seed: int = 0,
             operations: tuple[str, ...] = DEFAULT_OPERATIONS) -> TaskData:
    """Questions like "What is 37 + 45?" answered with the bare number; no question is in both splits.

    Raises ``ValueError`` when more questions are asked for than ``distinct_questions`` (drawing
    distinct ones would never end); callers size the split with ``kbit.core.data.split.arith_held_out``.
    """
    available = distinct_questions(operations)
    if train_size + held_out_size > available:
        raise ValueError(f"{train_size} + {held_out_size} arith questions asked for; only {available} exist")
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[Example] = []
    while len(examples) < train_size + held_out_size:
        question, answer = _question(rng, operations)
        if question in seen:
            continue
        seen.add(question)
        examples.append(Example(prompt=[("user", question)], completion=answer, answers=[answer]))
    return TaskData(
        name=NAME,
        task="arithmetic",
        train=examples[held_out_size:],
        held_out=examples[:held_out_size],
        source=f"generated(seed={seed})",
    )
