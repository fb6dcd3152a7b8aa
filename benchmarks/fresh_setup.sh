#!/usr/bin/env bash
# Times the README's demo command on a fresh clone in a fresh venv: set-up (venv + CPU torch + package) and
# generation, separately. Usage: bash benchmarks/fresh_setup.sh
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
git clone -q "$src" "$d/repo"
cd "$d/repo"
t0=$(date +%s.%N)
bash scripts/setup.sh >/dev/null 2>&1
t1=$(date +%s.%N)
.venv/bin/nested-diffusion generate --out out/demo --quiet >/dev/null
t2=$(date +%s.%N)
python3 -c "print(f'set-up {${t1}-${t0}:.1f} s, generation command (incl. interpreter start and model load) {${t2}-${t1}:.1f} s')"
