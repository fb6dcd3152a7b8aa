#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Fashion-MNIST comes from Debian's dataset-fashion-mnist and the
# browser for the web-demo test from Debian's chromium when apt is usable; tests that need them skip with a
# message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
apt_install() {  # apt_install PACKAGE: quietly, running apt-get update once if the first try fails
  command -v apt-get >/dev/null || return 1
  $SUDO apt-get install -y -q "$1" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "$1" >/dev/null 2>&1; }
}
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt_install dataset-fashion-mnist || echo "note: could not install dataset-fashion-mnist; real-data tests will skip"
fi
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium || echo "note: could not install chromium; the browser test will skip"
fi
scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
