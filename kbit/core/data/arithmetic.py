"""The embedded default dataset: seeded two-number arithmetic questions with a disjoint held-out split."""

from __future__ import annotations

import random
import re

import attrs

from kbit.core.data.examples import Example, TaskData

NAME = "arith"
REPHRASED = "arith-rephrased"

REPHRASINGS = {
    "+": ("Add {a} and {b}.", "Compute {a} plus {b}.", "{a} + {b} = ?", "Find the sum of {a} and {b}.",
          "How much is {a} plus {b}?", "Calculate {a}+{b}.", "What is the sum of {a} and {b}?",
          "Please add these two numbers: {a}, {b}.", "If you have {a} apples and get {b} more, how many apples do you have?",
          "What number is {b} more than {a}?"),
    "-": ("Subtract {b} from {a}.", "Compute {a} minus {b}.", "{a} - {b} = ?", "Find the difference of {a} and {b}.",
          "How much is {a} minus {b}?", "Calculate {a}-{b}.", "What is {a} take away {b}?",
          "Please subtract the second number from the first: {a}, {b}.",
          "If you have {a} apples and give away {b}, how many apples are left?", "What number is {b} less than {a}?"),
}
"""Wordings of the default questions that training never uses (it asks "What is A + B?" only)."""


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


def rephrased(data: TaskData) -> TaskData:
    """``data`` (from :func:`generate`) with the held-out questions asked in ``REPHRASINGS``: the same sums
    in wordings absent from training, to see whether a fine-tune learned the task or the phrase. The
    training split is unchanged.

    Every held-out sum is asked in every wording of its operation, in rounds: round ``k`` asks item ``i``
    in wording ``(i + k) % 10``. The first round is one question per sum (all ten wordings in turn), so
    ``--limit N`` for N up to the held-out count scores each sum once, and a larger limit asks the same
    sums again in other wordings, which narrows the score's interval without leaving the held-out sums.
    """
    parsed = []
    for example in data.held_out:
        (_, question), = example.prompt
        match = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", question)
        if match is None:
            raise ValueError(f"not a generated arith question: {question!r}")
        parsed.append((example, *match.groups()))
    rounds = min(len(wordings) for wordings in REPHRASINGS.values())
    held_out = [attrs.evolve(example, prompt=[("user", REPHRASINGS[op][(index + k) % len(REPHRASINGS[op])].format(a=a, b=b))])
                for k in range(rounds) for index, (example, a, op, b) in enumerate(parsed)]
    return attrs.evolve(data, name=REPHRASED, held_out=held_out, source=f"{data.source}, held-out rephrased")
