"""A run's "before" held-out score is the figure ``kbit eval RUN --variant base --method METHOD`` gives."""

from __future__ import annotations

import pytest

import json

from kbit.core.runs.record import read_record
from tests.conftest import run_kbit


@pytest.mark.slow
def test_the_runs_before_score_is_kbit_evals_score_of_its_base(kbit_tiny_model_factory, tmp_path):
    # Weights drawn wider than the default tiny model's, so its greedy answers differ from prompt to prompt
    # and compare the two paths sharply; bf16 and a non-default quant_type, where a base computed
    # otherwise (the trained model's, upcast by prepare_model) or loaded with the default spec answers otherwise.
    model = kbit_tiny_model_factory(initializer_range=0.2)
    run = tmp_path / "run"
    trained = run_kbit("train", "--model", str(model), "--output", str(run), "--max-steps", "2", "--batch-size", "2",
                       "-o", "r=4", "-o", "compute_dtype=bfloat16", "-o", "quant_type=fp4", "--max-examples", "40",
                       "--eval-limit", "8")
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_kbit("eval", str(run), "--variant", "base", "--method", "qlora", "--limit", "8",
                         "--out", str(tmp_path / "report"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]

    before = read_record(run).metrics.before
    row = next(r for r in json.loads(evaluated.stdout)["rows"] if r["variant"] == "base+qlora")
    predictions = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    answers = [p["prediction"] for p in predictions if p["variant"] == "base+qlora"]
    assert len(set(answers)) > 1  # answers that tell models apart
    assert [s["prediction"] for s in before.samples] == answers[: len(before.samples)]
    assert (before.items, before.exact_match, before.exact_match_hits, before.answers_cut) == \
           (row["items"], row["exact_match"], row["exact_match_hits"], row["answers_cut"])
