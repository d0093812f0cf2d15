#!/usr/bin/env bash
# The toy MoE table of docs/CD_MOE.md: CD-MoE (harness/tasks/condense.py) at several N (condensed
# layers) and K (experts per condensed layer) on the four toy tasks, each calibrated on its own train
# split. Finished runs are skipped on a rerun (their results file exists); a killed run resumes.
#
#     bash bench/toy_cd_moe.sh [OUT]        # OUT defaults to outputs/cd_moe_toy
#
# The sort runs also measure memory and speed (results/toy-moe/efficiency.json); the others skip it.
# Prints the table at the end (exact match %, 200 eval items per task).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/cd_moe_toy}
TASKS="sort count copy reverse"
GRID="1:2 2:2 4:2 2:1 2:4 4:4 1:0"  # N:K
for T in $TASKS; do
  for NK in $GRID; do
    N=${NK%:*}; K=${NK#*:}
    W=$OUT/$T/n${N}_k$K
    [ -f "$W/results/toy-moe/toy_$T.json" ] && continue
    EFF=(--skip_efficiency)
    [ "$T" = sort ] && EFF=()
    echo "+ python harness/tasks/condense.py dataset_cfgs/toy-moe_${T}_eval.py --condense_layers $N --condense_experts $K --calib_cfg dataset_cfgs/toy-moe_${T}_train.py --calib_samples 100 ${EFF[*]:-} --work_dir $W"
    python harness/tasks/condense.py "dataset_cfgs/toy-moe_${T}_eval.py" --condense_layers "$N" --condense_experts "$K" \
      --calib_cfg "dataset_cfgs/toy-moe_${T}_train.py" --calib_samples 100 "${EFF[@]}" --work_dir "$W" 2>&1 \
      | grep -E "condensed layers|cd_moe N=|rror" || true
  done
done
python - "$OUT" "$GRID" <<'PY'
import json, sys
from pathlib import Path
out, grid = Path(sys.argv[1]), [tuple(map(int, g.split(":"))) for g in sys.argv[2].split()]
tasks = "sort count copy reverse".split()
print("\n| N | K | layers (order) | " + " | ".join(tasks) + " | memory | prefill speed-up (sort) |\n|---|---|---|" + "---|" * (len(tasks) + 2))
for n, k in grid:
    cells, order = [], None
    for task in tasks:
        path = out / task / f"n{n}_k{k}" / "results" / "toy-moe" / f"toy_{task}.json"
        cells.append(f"{json.loads(path.read_text())['accuracy']:.1f}" if path.is_file() else "missing")
    eff = out / "sort" / f"n{n}_k{k}" / "results" / "toy-moe" / "efficiency.json"
    summary = out / "sort" / f"n{n}_k{k}" / "cd_moe" / "summary.json"
    order = json.loads(summary.read_text())["layer_order"] if summary.is_file() else "?"
    if eff.is_file():
        e = json.loads(eff.read_text())
        ctx = e["details"]["settings"]["context_lengths"][0]
        extra = [f"{e['memory_ratio']:.3f}", f"{e[f'prefill_speedup_ctx{ctx}']:.2f}"]
    else:
        extra = ["missing", "missing"]
    print(f"| {n} | {k} | {order} (sort) | " + " | ".join(cells + extra) + " |")
PY
