"""Evaluation: scoring answers, greedy generation, held-out loss, method-aware loading, reports."""
