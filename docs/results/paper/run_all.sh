#!/usr/bin/env bash
# The paper's experiments at the paper's settings (issue 15), resumable: re-running skips
# finished runs. Outputs under runs/paper/ (not committed); logs with wall times there too.
set -uo pipefail
cd "$(dirname "$0")/../../.."
ML=.venv/bin/markov-lens
mkdir -p runs/paper
step() {  # name, command...
    local name=$1; shift
    local t0=$(date +%s)
    echo "== $name: $* (start $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))" \
        | tee -a runs/paper/run_all.log
    "$@" > "runs/paper/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc, $(( $(date +%s) - t0 )) s wall (load $(cut -d' ' -f1-3 /proc/loadavg))" \
        | tee -a runs/paper/run_all.log
}
step tying "$ML" reproduce tying --seeds 10 --workers 2 --out runs/paper/tying
step tying_4x "$ML" sweep docs/results/paper/tying_4x.yaml --workers 2 --out runs/paper/tying_4x
step depth "$ML" reproduce depth --seeds 5 --workers 2 --out runs/paper/depth
step second_order "$ML" reproduce second-order --seeds 5 --workers 2 --out runs/paper/second-order
step phase "$ML" reproduce phase-diagram --seeds 10 --workers 2 --out runs/paper/phase-diagram
