"""Held-out scoring speed: greedy answers for the default task's held-out items, by batch size.

    python -m benchmarks.scoring_speed                    # float SmolLM2, the 100 held-out sums
    python -m benchmarks.scoring_speed --sizes 8 32 100 --max-new-tokens 16

Scores the same items with ``generate_answers`` at each batch size, alternating sizes for ``--rounds``
rounds, and prints each size's median seconds, its ratio to the first size, and how many answers and
exact-match hits differ from the first size's (left padding changes with the batch, and with it the
last bits of the logits; on a near-tie, a greedy answer). Decoding a 135M model on a CPU reads every
weight once per new token, for the whole batch at once, so fewer, larger batches read them fewer times.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import arith_data, model_path, setup, tokenizer


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 50, 100])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--model", help="a model folder instead of the default SmolLM2")
    args = p.parse_args(argv)
    setup(args)

    from transformers import AutoModelForCausalLM

    from kbit.core.measure.generation import generate_answers
    from kbit.core.measure.metrics import task_scores

    model = AutoModelForCausalLM.from_pretrained(model_path(), dtype=torch.float32).eval()
    tok = tokenizer()
    data = arith_data()
    items = list(data.held_out[: args.items])
    generate_answers(model, tok, items[:8], max_new_tokens=4, batch_size=8)  # warm-up
    seconds: dict[int, list[float]] = {size: [] for size in args.sizes}
    answers = {}
    for _ in range(args.rounds):
        for size in args.sizes:
            result = generate_answers(model, tok, items, max_new_tokens=args.max_new_tokens, batch_size=size)
            seconds[size].append(result.seconds)
            answers[size] = result.texts
    first = args.sizes[0]
    reference = answers[first]
    print(f"{len(items)} held-out items, at most {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds")
    for size in args.sizes:
        median = statistics.median(seconds[size])
        differ = sum(a != b for a, b in zip(answers[size], reference))
        hits = task_scores(data.task, answers[size], items)[1].get("exact_match_hits")
        print(f"  batch {size:>4}: {median:6.2f} s  ratio {median / statistics.median(seconds[first]):.2f}  "
              f"exact-match hits {hits}  answers differing from batch {first}: {differ}")


if __name__ == "__main__":
    main()
