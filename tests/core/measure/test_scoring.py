"""Math answers compared by value with math-verify, and the plain rule where it is absent or parses nothing;
only the final answer counts, never the question's expression restated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kbit.core.measure.scoring import math_scorer, score

CASES = [
    # (gold, prediction, exact match)
    ("\\frac{1}{2}", "Half of the pie is eaten, so the answer is \\boxed{0.5}.", True),
    ("0.25", "One slice of four: \\boxed{\\frac{1}{4}}.", True),
    ("\\frac{3}{4}", "The fraction is \\boxed{\\dfrac{3}{4}}", True),
    ("12", "The rope is \\boxed{12\\,\\mathrm{cm}} long.", True),
    ("12", "So she walks \\boxed{12 \\text{ km}}.", True),
    ("25\\%", "The discount is \\boxed{0.25}.", True),
    ("2\\sqrt{2}", "The diagonal is \\boxed{\\sqrt{8}}.", True),
    ("1234", "The answer is 1,234.", True),
    ("19", "Leo has 12 + 7 = 19 marbles. The answer is \\boxed{19}.", True),
    ("19", "Leo has 12 + 7 = 19 marbles. The answer is \\boxed{18}.", False),
    ("13", "12", False),
    ("\\frac{1}{3}", "\\boxed{0.3}", False),
    ("5", "no idea", False),
]


@pytest.mark.parametrize("gold, prediction, expected", CASES)
def test_math_answers_are_compared_by_value(gold, prediction, expected):
    assert score("openmath", prediction, [gold]) == {"exact_match": float(expected)}


ONLY_THE_ANSWER = [
    # (gold, prediction, exact match): the question was "What is 59 + 63?"
    ("122", "59 + 63", False),  # an echo is not an answer, though math-verify evaluates it to 122
    ("122", "What is 59 + 63?", False),
    ("122", "59 + 63 =", False),
    ("122", "59 + 63 = 122", True),  # a chain answers its last value
    ("122", "59 + 63 = 122. So 122 + 1 = 123", False),  # the final answer is 123
    ("122", "\\boxed{122}", True),
    ("122", "\\boxed{59+63}", False),  # an unevaluated expression, boxed or not
    ("12", "\\boxed{3 \\times 4}", False),
    ("122", "The answer is 122.", True),
    ("122", "The answer is 59 + 63.", False),
    ("122", "What is 59 + 63?\n59 + 63 = 122", True),
    ("122", "122. I hope it helps!", True),  # the last statement that holds a number
    ("16", "12 + 7 = 19. She gives 3 away, leaving 16.", True),
    ("-5", "The result is -5.", True),  # a negative number is a value
    ("1/2", "\\boxed{\\frac{1}{2}}", True),  # a fraction as the whole answer is a value
    ("0.5", "\\boxed{\\frac{1}{2}}", True),
    ("1/2", "0.5", True),
    ("0.5", "0.5", True),
    ("0.5", "The answer is 1/2.", True),
    ("0.5", "So $x = \\frac{1}{2}$.", True),
    ("2^{10}", "\\boxed{2^{10}}", True),  # an expression is compared with a gold that is one
]


@pytest.mark.parametrize("gold, prediction, expected", ONLY_THE_ANSWER)
def test_only_the_final_answer_is_scored(gold, prediction, expected):
    assert score("arithmetic", prediction, [gold]) == {"exact_match": float(expected)}


def test_other_tasks_compare_the_whole_prediction():
    assert score("squad", "59 + 63", ["59 + 63"]) == {"exact_match": 1.0, "f1": 1.0}
    assert score("completion", "59 + 63", ["122"]) == {"exact_match": 0.0}


def test_the_scorer_is_named_for_reports():
    assert math_scorer().startswith("math-verify 0.")


def test_without_math_verify_the_plain_rule_scores(tmp_path):
    """math-verify blocked from importing: the last boxed value or number decides, compared as a number."""
    program = (
        "import sys, json; sys.modules['math_verify'] = None\n"
        "from kbit.core.measure.scoring import math_scorer, score\n"
        f"cases = {json.dumps([[g, p] for g, p, _ in CASES])}\n"
        f"echoes = {json.dumps([[g, p] for g, p, _ in ONLY_THE_ANSWER[:9]])}\n"
        "print(json.dumps([math_scorer(), [score('openmath', p, [g])['exact_match'] for g, p in cases],\n"
        "                  [score('arithmetic', p, [g])['exact_match'] for g, p in echoes]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    name, scores, echoes = json.loads(result.stdout)
    assert name.startswith("plain rule") and "not installed" in name
    # numbers and a boxed integer still match; LaTeX values and units need math-verify
    assert scores == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
    # only the final answer counts under the plain rule too
    assert echoes == [float(expected) for _, _, expected in ONLY_THE_ANSWER[:9]]


def test_an_unparsable_gold_falls_back_to_the_plain_rule():
    # math-verify parses no value from "\$1,200" here; the plain rule compares 1200 with 1200
    assert score("openmath", "The total is \\boxed{\\$1200}.", ["\\$1,200"]) == {"exact_match": 1.0}
