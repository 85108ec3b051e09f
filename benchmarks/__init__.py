"""kbit benchmarks: programs (not tests) that measure kbit against a reference in the same run.

Run all of them with ``python -m benchmarks.run`` (see BENCHMARKS.md); each item also runs alone,
e.g. ``python -m benchmarks.storage --quick``.
"""
