"""``kbit compare``: train each method with the same budget and data, evaluate every variant, report.

- ``plan.py``: every input checked and every run's fate decided (train, reuse, resume) before
  anything is written;
- ``runs.py``: whether an existing run folder is reusable for a method's settings;
- ``pipeline.py``: train or reuse each method's run, evaluate it, keep the report up to date;
- ``report.py``: ``report.json``, ``report.md`` and ``report.png`` of the comparison folder.

The comparison folder (``compare/<model>-<dataset>-<steps>steps`` by default) holds
``runs/<method>/`` (ordinary kbit runs), ``evals/<method>/`` and ``evals/base/`` (ordinary
``kbit eval`` reports) and the report files.
"""
