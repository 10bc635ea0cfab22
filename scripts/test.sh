#!/usr/bin/env bash
# Install, then run the whole test suite (tiny models, plus the embedded default once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python -m pytest -q -p no:cacheprovider "$@"
