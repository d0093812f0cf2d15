#!/usr/bin/env bash
# The toy MoE table of docs/MERGING.md: frequency pruning vs m_smoe / hc_smoe (with and without neuron
# alignment) at budgets 4 and 2 on the four toy tasks. One calibration pass per task (--calib_dir),
# each task's own train split. Finished runs are skipped on a rerun (their results file exists).
#
#     bash bench/toy_merging.sh [OUT]        # OUT defaults to outputs/merging_toy
#
# Prints one markdown table per budget at the end (exact match %, 200 eval items per task).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/merging_toy}
TASKS="sort count copy reverse"
RUNS="frequency m_smoe m_smoe_align hc_smoe hc_smoe_align"
for T in $TASKS; do
  D=$OUT/$T
  C=dataset_cfgs/toy-moe_${T}_eval.py
  for B in 4 2; do
    for R in $RUNS; do
      W=$D/${R}_b$B
      [ -f "$W/results/toy-moe/toy_$T.json" ] && continue
      M=${R%_align}
      CFG=()
      [ "$R" != "$M" ] && CFG=(--method_cfg method_cfgs/$R.py)
      echo "+ python harness/tasks/compress.py $C --method $M ${CFG[*]:-} --budget $B --calib_cfg dataset_cfgs/toy-moe_${T}_train.py --calib_samples 500 --calib_dir $D/calibration --work_dir $W"
      python harness/tasks/compress.py "$C" --method "$M" "${CFG[@]}" --budget "$B" \
        --calib_cfg "dataset_cfgs/toy-moe_${T}_train.py" --calib_samples 500 --calib_dir "$D/calibration" \
        --work_dir "$W" 2>&1 | grep -E "budget|Error|error" || true
    done
  done
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
tasks, runs = "sort count copy reverse".split(), "frequency m_smoe m_smoe_align hc_smoe hc_smoe_align".split()
for budget in (4, 2):
    print(f"\nbudget {budget}\n\n| plan | " + " | ".join(tasks) + " |\n|---|" + "---|" * len(tasks))
    for run in runs:
        cells = []
        for task in tasks:
            path = out / task / f"{run}_b{budget}" / "results" / "toy-moe" / f"toy_{task}.json"
            cells.append(f"{json.loads(path.read_text())['accuracy']:.1f}" if path.is_file() else "missing")
        print(f"| {run} | " + " | ".join(cells) + " |")
PY
