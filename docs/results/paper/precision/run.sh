#!/usr/bin/env bash
# Issue 26: the trap per arithmetic (spec.yaml: 4 arithmetics x 10 seeds = 40 runs of the
# paper's tying cell). CPU cost: a float32 run takes about 11 s on one thread of the project's
# 2-core CPU; measured over 40 steps at the paper's size on a loaded machine, bf16 took 1.3x
# and fp16 7x the float32 time (fp16 matmuls are slow on this CPU): about 30 core-minutes in
# all, 15 minutes with two workers on an idle machine (an estimate, not a measurement).
# Resumable: `markov-lens sweep` skips finished runs, so re-running continues an interrupted
# sweep. Runs under runs/paper/precision (not committed); then
# table.py writes table.md and table.csv here (trap fraction per arithmetic with Wilson
# intervals, plateau exit step per seed).
# Overrides (for a smoke test): SPEC, OUT, TABLE_DIR, WORKERS, ML, PY.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
HERE=docs/results/paper/precision
ML=${ML:-.venv/bin/markov-lens}
PY=${PY:-.venv/bin/python}
SPEC=${SPEC:-$HERE/spec.yaml}
OUT=${OUT:-runs/paper/precision}
TABLE_DIR=${TABLE_DIR:-$HERE}
mkdir -p "$OUT"
t0=$(date +%s)
echo "== precision: $ML sweep $SPEC --workers ${WORKERS:-2} --out $OUT (start $(date -u +%H:%M:%S))"
"$ML" sweep "$SPEC" --workers "${WORKERS:-2}" --out "$OUT" > "$OUT/sweep.log" 2>&1
echo "== precision: sweep done, $(( $(date +%s) - t0 )) s wall"
"$PY" "$HERE/table.py" "$OUT" --out "$TABLE_DIR"
