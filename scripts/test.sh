#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Fashion-MNIST comes from Debian's dataset-fashion-mnist when
# apt is usable; tests that need the real files skip with a message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "note: could not install dataset-fashion-mnist; real-data tests will skip"
fi
scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
