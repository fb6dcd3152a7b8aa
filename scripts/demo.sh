#!/usr/bin/env bash
# Set up (if needed) and run the anytime demo on the bundled Fashion-MNIST model; prints where the files are.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/nested-diffusion generate --out out/demo "$@"
