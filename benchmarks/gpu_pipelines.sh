#!/usr/bin/env bash
# Nested vs vanilla diffusers pipelines on a GPU with SD-1.5-sized and DiT-XL/2-sized random-weight models
# (fp16, built from inline configs; nothing is downloaded). Needs torch with CUDA, diffusers and transformers.
#   benchmarks/gpu_pipelines.sh                     # defaults: 4 × 15 = 60 NFE, SD 512² batch 4, DiT batch 8
#   benchmarks/gpu_pipelines.sh --models dit --repeats 5
#   PYTHON=.venv/bin/python benchmarks/gpu_pipelines.sh --dry-run    # parameter counts only, no GPU needed
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import diffusers, transformers" 2>/dev/null; then
    echo "error: $PY cannot import diffusers and transformers (pip install diffusers transformers accelerate)" >&2
    exit 1
fi
case " $* " in
    *" --dry-run "*|*" --tiny "*) ;;
    *)
        if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
            echo "error: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)'));" \
                 "this benchmark needs a GPU (--tiny: CPU plumbing check, --dry-run: configs only)" >&2
            exit 1
        fi
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
        ;;
esac
exec "$PY" benchmarks/gpu_pipelines.py "$@"
