"""Measuring models: greedy answers, their scores and intervals, held-out loss, logit agreement, sizes."""
