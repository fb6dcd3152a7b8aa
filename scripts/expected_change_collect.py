"""Background driver: calibration-run chunks of the bundled model for one sampler configuration (resumable).

    nice -n 10 .venv/bin/python scripts/expected_change_collect.py --outer 5 --inner 20 --seeds 100000:101000 \
        --cache runs/expected-change/5x20
Labels: class = seed % 10. Guidance: the bundled default. Solver: ddpm (the demo's).
"""
import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

from nested_diffusion.bundled import DEFAULT_GUIDANCE, load_unet, make_denoiser  # noqa: E402
from nested_diffusion.core.nested import NestedSampler  # noqa: E402
from nested_diffusion.evaluation.calibration_runs import run_chunks  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--outer", type=int, required=True)
p.add_argument("--inner", type=int, required=True)
p.add_argument("--solver", default="ddpm")
p.add_argument("--seeds", action="append", required=True, help="lo:hi (several allowed, interleaved by chunk)")
p.add_argument("--cache", required=True)
p.add_argument("--chunk", type=int, default=100)
a = p.parse_args()
torch.set_num_threads(1)
den = make_denoiser(load_unet(), DEFAULT_GUIDANCE)
sampler = NestedSampler(den, a.outer, a.inner, a.solver)
ranges = [range(*map(int, r.split(":"))) for r in a.seeds]
for i in range(max(len(r) for r in ranges) // a.chunk + 1):
    for r in ranges:
        s = list(r[i * a.chunk:(i + 1) * a.chunk])
        if s:
            run_chunks(sampler, s, lambda ss: torch.tensor([x % 10 for x in ss]), (1, 28, 28), a.cache,
                       chunk=a.chunk, log=lambda m: print(m, flush=True))
