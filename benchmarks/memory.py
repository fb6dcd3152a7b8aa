"""Peak memory of sampling through the public API and through the ``generate`` command, each beside the same run
under an explicit ``torch.no_grad()`` (issue 10: sampling must not record autograd graphs; target ratio ≤ 1.2).

Every measurement is a fresh Python process (peak RSS = ``ru_maxrss`` at its end), so runs do not share memory.
Default: 250 samples × 100 NFE (5 outer × 20 inner, learned-variance DDPM, guidance 2.0 — the demo's settings).
Usage: python benchmarks/memory.py [--samples 250] [--outer 5] [--inner 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

API = """
import contextlib, json, resource, sys, torch
from nested_diffusion import NestedSampler
from nested_diffusion.bundled import load_unet, make_denoiser
n, outer, inner, threads, explicit = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
sampler = NestedSampler(make_denoiser(load_unet()), outer, inner, "ddpm")
with (torch.no_grad() if explicit else contextlib.nullcontext()):
    u = sampler.sample(list(range(n)), (n, 1, 28, 28), cond=torch.arange(n) % 10)
print(json.dumps(dict(peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, nfe=u.nfe)))
"""

COMMAND = """
import contextlib, json, resource, sys, torch
from nested_diffusion.cli import main
n, outer, inner, threads, explicit = (int(a) for a in sys.argv[1:6])
argv = ["generate", "--out", sys.argv[6], "--classes", ",".join(str(i % 10) for i in range(n)), "--outer",
        str(outer), "--inner", str(inner), "--threads", str(threads), "--scale", "1", "--quiet"]
with (torch.no_grad() if explicit else contextlib.nullcontext()):
    code = main(argv)
print(json.dumps(dict(peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, code=code)))
"""


def measure(script: str, args: list[str]) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    doc["wall_s"] = time.perf_counter() - t0
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=250)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    common = [str(args.samples), str(args.outer), str(args.inner), str(args.threads)]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, script in (("public API", API), ("generate command", COMMAND)):
            extra = [f"{tmp}/{name.split()[0]}"] if script is COMMAND else []
            plain = measure(script, common + ["0"] + extra)
            guarded = measure(script, common + ["1"] + extra)
            rows[name] = (plain, guarded)
    nfe = args.outer * args.inner
    print(f"{args.samples} samples × {nfe} NFE ({args.outer}×{args.inner} ddpm), {args.threads} thread(s); "
          f"peak RSS of a fresh process each")
    for name, (plain, guarded) in rows.items():
        ratio = plain["peak_mib"] / guarded["peak_mib"]
        print(f"{name:17s} as users call it {plain['peak_mib']:8.0f} MiB ({plain['wall_s']:.0f} s)   "
              f"under torch.no_grad() {guarded['peak_mib']:8.0f} MiB ({guarded['wall_s']:.0f} s)   "
              f"ratio {ratio:.3f} (target ≤ 1.2)")


if __name__ == "__main__":
    main()
