#!/usr/bin/env bash
# The toy MoE table of docs/SLIMMING.md: Wanda and SparseGPT on the routed experts at 50%, 70%, 90%
# unstructured, and 2:4, each task's own train split as calibration (500 prompts), evaluated on the
# four toy tasks.
# Finished runs are skipped on a rerun (their results file exists).
#
#     bash bench/toy_slimming.sh [OUT]        # OUT defaults to outputs/slimming_toy
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/slimming_toy}
TASKS="sort count copy reverse"
for T in $TASKS; do
  D=$OUT/$T
  C=dataset_cfgs/toy-moe_${T}_eval.py
  [ -f "$D/full/results/toy-moe/toy_$T.json" ] || python harness/tasks/infer.py "$C" --work_dir "$D/full" 2>&1 | grep -E "accuracy|rror" || true
  for M in wanda sparsegpt; do
    for S in "--sparsity 0.5" "--pattern 2:4" "--sparsity 0.7" "--sparsity 0.9"; do
      N=${M}_$(echo "$S" | awk '{print $2}' | tr ':' '-')
      [ -f "$D/$N/results/toy-moe/toy_$T.json" ] && continue
      [ -d "$D/$N/model" ] || python tools/slim.py --model_path models/toy-moe --method $M $S \
        --calib_cfg dataset_cfgs/toy-moe_${T}_train.py --calib_samples 500 --out "$D/$N/model" 2>&1 | grep -E "^wrote|rror" || true
      python harness/tasks/infer.py "$C" --model_path "$D/$N/model" --work_dir "$D/$N" 2>&1 | grep -E "accuracy|rror" || true
    done
  done
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
tasks = "sort count copy reverse".split()
runs = ["full"] + [f"{m}_{s}" for s in ("0.5", "2-4", "0.7", "0.9") for m in ("wanda", "sparsegpt")]
print("| model | " + " | ".join(tasks) + " |\n|---|" + "---|" * len(tasks))
for run in runs:
    cells = []
    for task in tasks:
        f = out / task / run / "results/toy-moe" / f"toy_{task}.json"
        cells.append(f"{json.loads(f.read_text())['accuracy']:.1f}" if f.is_file() else "-")
    print(f"| {run} | " + " | ".join(cells) + " |")
PY
