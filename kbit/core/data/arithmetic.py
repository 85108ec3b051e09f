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


def generate(train_size: int = 2000, held_out_size: int = 100, seed: int = 0,
             operations: tuple[str, ...] = DEFAULT_OPERATIONS) -> TaskData:
    """Questions like "What is 37 + 45?" answered with the bare number; no question is in both splits."""
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
