"""kbit's core, grouped by job.

- ``contract/``: what a method plugin implements and returns (hook specs, ``QuantizationSpec``, options).
- ``methods/``: finding plugins through the ``kbit.methods`` entry points and calling their hooks.
- ``model/``: loading, quantizing, adapting, merging and checking models.
- ``measure/``: answers, scores, loss and logit agreement, used by every command that reports a figure.
- ``runs/``: run folders, their record (``kbit.json``), output rules, names and model cards.
- ``system/``: device and dtype, the CPU probe, allocator, signals, console, cache, input files.
- the commands: ``cli.py`` and ``train/``, ``evaluate/``, ``export/``, ``compare/``, ``quantize.py``,
  ``push.py``; ``data/`` (datasets and splits), ``runtime/`` (llama.cpp), ``scaffold/`` (``kbit new-method``).
"""
