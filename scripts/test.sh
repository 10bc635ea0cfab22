#!/usr/bin/env bash
# Install, then run the whole test suite (tiny models, plus the embedded default once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Test extras: pytest and llama.cpp's OpenAI-compatible server (compiled once, then cached by pip).
python -m pip install -q -e ".[test]"
python -m pytest -q -p no:cacheprovider "$@"
