#!/usr/bin/env bash
# Creates .venv (Python ≥ 3.10) with the CPU build of PyTorch and this package. Idempotent.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # A local CPU wheel (pip find-links) if there is one; otherwise PyTorch's CPU index — never the multi-GB CUDA build.
  .venv/bin/pip install -q "torch==2.13.0+cpu" 2>/dev/null \
    || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
         --extra-index-url https://pypi.org/simple
fi
if [ -n "$EXTRAS" ]; then
  .venv/bin/pip install -q -e ".[$EXTRAS]"
else
  .venv/bin/pip install -q -e .
fi
