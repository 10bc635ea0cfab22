#!/usr/bin/env bash
# Install, then run the whole test suite (tiny models, plus the embedded default once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Test extras: pytest and llama.cpp's OpenAI-compatible server (compiled once, then cached by pip).
python -m pip install -q -e ".[test]"
# Headless Chromium for the test that opens the evaluation report in a browser (Debian's package).
# Best effort: without it (not root, no apt) that one test is skipped and says why.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 900 apt-get install -y -q chromium >/dev/null 2>&1 \
    || { timeout 300 apt-get update -q >/dev/null 2>&1 && timeout 900 apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "Could not install Debian's chromium: the headless-browser report test will be skipped."
fi
python -m pytest -q -p no:cacheprovider "$@"
