#!/usr/bin/env bash
# The GPU check of issue 13, for a machine with an NVIDIA GPU (a few minutes on an H200):
#   1. the device-sensitive tests on CUDA (tests/training/test_cuda.py; they skip without a GPU),
#   2. one run at the paper's settings (400 updates of 16 x 1024, tied, p=0.5 q=0.8),
#   3. a stack of 256 members: tokens/s and the ratio to 256 single-run steps,
#   4. (issue 26) the precision slice on CUDA: the tying cell in fp32 and in the authors' GPU
#      arithmetic (fp16 autocast, no scaler, TF32), seeds 0-3, to compare with the CPU emulation
#      in docs/results/paper/precision,
#   5. (issue 22) a slice of the in-context reproduction at the paper's size (length 512,
#      d_model 32, 8,000 updates): its depth block (one kernel per minibatch), 1 and 2 layers,
#      seed 0,
#   6. (issue 22) a slice of the in-context atlas at the paper's size (preset
#      in-context-paper): order 1, full attention, untied with an MLP, 1 and 2 layers, seed 0.
# usage: bash benchmarks/gpu_check.sh [OUT_DIR]        (default $OUT or /tmp/markov-lens-gpu)
# Runs with the machine's python3 (PYTHON=... to change) and this checkout on PYTHONPATH;
# wheels of missing packages in .whl/ are installed to /tmp/site first (no network needed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/markov-lens-gpu}}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
echo "== 1. device-sensitive tests on CUDA"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/training/test_cuda.py 2>&1 \
    | tee "$OUT_DIR/tests.log" || status=1
echo "== 2-3. paper run and stack of 256"
$PY benchmarks/gpu_check.py --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/figures.log" || status=1
echo "== 4. precision slice on CUDA (fp32 vs the authors' fp16 + TF32)"
for arith in "--precision fp32" "--precision fp16 --no-grad-scaler --tf32"; do
    for seed in 0 1 2 3; do
        tag=$(echo "$arith" | tr -cd '[:alnum:]')-s$seed
        $PY -m markov_lens.cli train --p 0.5 --q 0.8 --iters 400 --seq-len 1024 --batch 16 \
            --seed "$seed" --device cuda $arith --out "$OUT_DIR/precision/$tag" \
            2>&1 | tail -2 | tee -a "$OUT_DIR/precision.log" || status=1
    done
done
echo "== 5. in-context depth slice at the paper's size (1 and 2 layers, seed 0)"
$PY - "$OUT_DIR/in-context.json" <<'PYEOF' || status=1
import json, sys
from training.experiments.presets import in_context_specs
block = in_context_specs("full", 1)[1]  # the depth block: one kernel per minibatch
block["model"]["layers"], block["seeds"] = [1, 2], [0]
json.dump([block], open(sys.argv[1], "w"))
PYEOF
$PY -m markov_lens.cli sweep "$OUT_DIR/in-context.json" --workers 1 --out "$OUT_DIR/in-context" \
    2>&1 | tail -5 | tee "$OUT_DIR/in-context.log" || status=1
echo "== 6. in-context atlas slice at the paper's size (1 and 2 layers, seed 0)"
$PY - "$OUT_DIR/atlas-in-context.json" <<'PYEOF' || status=1
import json, sys
from interp.atlas.grid import preset_spec
block = preset_spec("in-context-paper", 1)[0]  # order 1, full attention
block["model"] |= {"layers": [1, 2], "tie": [False], "mlp": [True]}
block["seeds"] = [0]
json.dump([block], open(sys.argv[1], "w"))
PYEOF
$PY -m markov_lens.cli atlas "$OUT_DIR/atlas-in-context.json" --workers 1 --no-probes \
    --out "$OUT_DIR/atlas-in-context" 2>&1 | tail -5 | tee "$OUT_DIR/atlas-in-context.log" \
    || status=1
exit $status
