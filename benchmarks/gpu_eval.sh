#!/usr/bin/env bash
# Issue 4's experiments on one GPU in one prepared run (device time is scarce): budget table at 2,000 samples,
# RND sweep at 10,000, consistency and the qualitative figure from the sweep's cache, then the budget table at
# 10,000 if time is left. Stages share one sample cache; each stage is time-boxed so the JSON/PNG of the
# finished ones always come back. Results: $RESULTS (default runs/gpu-eval), logs included.
#   OUT=/tmp/x bash benchmarks/gpu_eval.sh                      # on a CUDA machine
#   SMALL=20 BIG=40 CHUNK=10 DEVICE=cpu LIMIT=300 bash benchmarks/gpu_eval.sh   # CPU plumbing check
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SMALL="${SMALL:-2000}"; BIG="${BIG:-10000}"; CHUNK="${CHUNK:-2000}"; DEVICE="${DEVICE:-cuda}"
LIMIT="${LIMIT:-540}"                       # seconds for all stages together
THREADS="${THREADS:-$(nproc)}"; WORKERS="${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}"
RESULTS="${RESULTS:-runs/gpu-eval}"
CACHE="$RESULTS/cache"
mkdir -p "$RESULTS"
END=$(( $(date +%s) + LIMIT ))
common=(--device "$DEVICE" --threads "$THREADS" --noise-workers "$WORKERS" --chunk "$CHUNK" --cache-dir "$CACHE")

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, torchmetrics, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'torchmetrics', torchmetrics.__version__, 'numpy', numpy.__version__, 'cpus', torch.get_num_threads())"
  echo "SMALL=$SMALL BIG=$BIG CHUNK=$CHUNK DEVICE=$DEVICE THREADS=$THREADS WORKERS=$WORKERS LIMIT=$LIMIT"
} 2>&1 | tee "$RESULTS/env.txt"

stage() {   # stage NAME MIN_SECONDS_LEFT -- command...
    local name=$1 need=$2; shift 3
    local left=$(( END - $(date +%s) ))
    if (( left < need )); then echo "[$name] skipped: ${left}s left (< ${need}s)" | tee -a "$RESULTS/stages.txt"; return; fi
    local t0; t0=$(date +%s)
    timeout "$left" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    echo "[$name] rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$RESULTS/stages.txt"
    tail -n 3 "$RESULTS/$name.log"
}

ev=("$PY" -m nested_diffusion.cli eval)
stage budget-small 60 -- "${ev[@]}" budget-table --samples "$SMALL" --out "$RESULTS/budget-$SMALL" "${common[@]}"
stage rnd-big 60 -- "${ev[@]}" rnd-sweep --samples "$BIG" --out "$RESULTS/rnd-$BIG" "${common[@]}"
stage consistency 30 -- "${ev[@]}" consistency --samples "$BIG" --out "$RESULTS/consistency-$BIG" "${common[@]}"
stage qualitative 20 -- "${ev[@]}" qualitative --out "$RESULTS/qualitative" --device "$DEVICE" --cache-dir "$CACHE"
stage budget-big 150 -- "${ev[@]}" budget-table --samples "$BIG" --out "$RESULTS/budget-$BIG" "${common[@]}"
echo "done; results in $RESULTS"
