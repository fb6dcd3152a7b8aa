#!/usr/bin/env bash
# Creates .venv (Python ≥ 3.10) with PyTorch and this package, every package at the version pinned in
# constraints.txt. Idempotent: a second run only re-checks the pins (pip installs nothing that already matches).
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test
# Where pip takes torch from is pip's own configuration (pip.conf, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS): point it at a CPU build of torch (a local wheel folder or a CPU wheel index) to avoid the
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${1:-}
PIP=(.venv/bin/pip install -q -c constraints.txt)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
TORCH=$(grep -E '^torch==' constraints.txt)   # e.g. torch==2.13.0
if ! "${PIP[@]}" "$TORCH"; then
  cat >&2 <<EOF
error: pip could not install $TORCH.
  Point pip at a CPU build of $TORCH and rerun this script, e.g. a folder holding its wheel:
    PIP_FIND_LINKS=/path/to/wheels bash $0 $EXTRAS
  or a CPU wheel index (PIP_INDEX_URL=..., with PIP_EXTRA_INDEX_URL=... for the other packages), or the same
  settings in pip.conf. Other torch versions are not tested here (constraints.txt pins every package).
EOF
  exit 1
fi
if [ -n "$EXTRAS" ]; then
  "${PIP[@]}" -e ".[$EXTRAS]"
else
  "${PIP[@]}" -e .
fi
