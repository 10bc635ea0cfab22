#!/usr/bin/env bash
# The data-release workflow end to end, on the bundled SMS Spam sample and the embedded model:
#   plan a budget -> plant canaries -> generate (two runs on one budget; the second is refused when it
#   would overspend) -> evaluate -> verify the bundle -> a release folder that `datasets` opens.
#
#   bash examples/release_workflow.sh [WORK_DIR]          # about 5 minutes on a 2-core CPU
#
# SYNTHDP_MODEL=PATH uses another local model; SYNTHDP_EXAMPLE_SET="KEY=VALUE ..." adds pipeline options.
set -euo pipefail
WORK=${1:-$(mktemp -d -t synthdp-release-XXXX)}
mkdir -p "$WORK"
cd "$WORK"
MODEL_FLAGS=()
if [ -n "${SYNTHDP_MODEL:-}" ]; then MODEL_FLAGS=(--model "$SYNTHDP_MODEL"); fi
SET_FLAGS=(--set batch_size=31 --set max_tokens=15 --set max_record_tokens=64)  # r = 5 at epsilon 4: 15 tokens
for pair in ${SYNTHDP_EXAMPLE_SET:-}; do SET_FLAGS+=(--set "$pair"); done

echo "== 0. the private data: 300 rows of the bundled sample; the other 100 are held out for evaluation"
python - <<'PY'
import json
from synthdp.data import bundled_sample_path
rows = bundled_sample_path().read_text(encoding="utf-8").splitlines()
open("private.jsonl", "w").write("\n".join(rows[:300]) + "\n")
open("heldout.jsonl", "w").write("\n".join(rows[300:]) + "\n")
PY

echo "== 1. one budget for this data set: every run is charged to it, composed by dp_accounting"
synthdp budget init sms.budget --epsilon 5 --delta 1e-5 --description "SMS sample, 300 rows"

echo "== 2. canaries: unique strings planted in a copy of the data, to test the release for copying"
synthdp canaries insert private.jsonl private+canaries.jsonl --k 5

echo "== 3. generate, charged to the budget (the label set is public: given with --labels)"
synthdp generate --data private+canaries.jsonl --labels ham,spam --pipeline private-prediction \
    --epsilon 4 --delta 1e-5 --num-samples 8 --budget sms.budget --out run1 --no-progress \
    "${MODEL_FLAGS[@]}" "${SET_FLAGS[@]}"
synthdp budget show sms.budget

echo "== 4. a second run that would overspend the budget is refused: nothing is written, nothing charged"
if synthdp generate --data private+canaries.jsonl --labels ham,spam --pipeline private-prediction --epsilon 4 --delta 1e-5 --num-samples 8 \
    --budget sms.budget --out run2 --no-progress "${MODEL_FLAGS[@]}" "${SET_FLAGS[@]}"; then
  echo "expected the second run to be refused" >&2; exit 1
fi
test ! -e run2/ledger.json

echo "== 5. evaluate: utility against held-out data, and leakage checks (canaries, copies); not for release"
synthdp evaluate --synthetic run1 --real heldout.jsonl --private private+canaries.jsonl \
    --canaries private+canaries.jsonl.canaries.json --out report

echo "== 6. the reviewer's check: epsilon recomputed, every file against its sha256, the budget entry"
synthdp ledger verify run1 --budget sms.budget
synthdp ledger show run1

echo "== 7. the release folder: the bundle as it stands (README.md is a datasets dataset card)"
mkdir -p release
cp run1/synthetic.jsonl run1/synthetic.parquet run1/ledger.json run1/RELEASE.md run1/README.md run1/config.toml release/
synthdp ledger verify release
HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 python -c "
import datasets
corpus = datasets.load_dataset('release', split='train', cache_dir='hf-cache')
print(f'datasets.load_dataset(\"release\"): {corpus.num_rows} rows, columns {corpus.column_names}')
"
echo "Done: $WORK/release"
