"""Wall-time cost of attaching an expected-change calibration to the stream, side by side in one process.

The path ``nested-diffusion generate`` runs: the bundled model, the demo configuration (the progressive schedule
at 100 NFE, learned-variance DDPM, guidance 1.25; ``--schedule uniform`` for 5 × 20 at 2.0), one batch of ``--batch`` samples, previews "first", no inference_mode wrapper (the stream
turns autograd off itself). Runs alternate plain / pixel-signal calibration / feature-signal calibration
``--repeats`` times; the script prints, per variant, the median over repeats of its wall-time and CPU-time ratio
to the plain run of the same repeat (target ≤ 1.02); CPU time is the robust one on a shared machine.
The calibrations are the shipped ones for the demo configuration ("auto" = pixel signals, "feature"); a
variant without a shipped file is fitted here on a small calibration run (the fit's quality does not affect the
cost).

Usage: python benchmarks/expected_change_overhead.py [--batch 10] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nested_diffusion.bundled import DEFAULT_GUIDANCE, DEMO_GUIDANCE, load_unet, make_denoiser
from nested_diffusion.bundled.expected_change import classifier_feature_function, model_identity, resolve_calibration
from nested_diffusion.core.change_fit import fit_calibration
from nested_diffusion.core.nested import NestedSampler
from nested_diffusion.evaluation.calibration_runs import run_chunk
from nested_diffusion.evaluation.expected_change import PIXEL_SIGNALS, chunk_targets, replay_signals


def small_calibration(sampler, config, fn, feature_signals: bool, n: int = 20):
    chunk = run_chunk(sampler, list(range(10**6, 10**6 + n)), (n, 1, 28, 28), torch.arange(n) % 10)
    S = replay_signals(chunk, sampler.inner_steps, fn if feature_signals else None)
    T = chunk_targets(chunk, lambda x: fn(x)[0], lambda x: fn(x)[1])
    cal = fit_calibration(S, T, [int(v) for v in chunk["nfe"]], config,
                          features=None if feature_signals else PIXEL_SIGNALS)
    cal.features = fn if feature_signals else None
    return cal


def timed(sampler, labels, cal) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one streamed run."""
    t0, c0 = time.perf_counter(), time.process_time()
    for u in sampler.stream(list(range(len(labels))), (len(labels), 1, 28, 28), labels, calibration=cal):
        pass
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--schedule", choices=("progressive", "uniform"), default="progressive")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    unet = load_unet()
    guidance = DEMO_GUIDANCE if a.schedule == "progressive" else DEFAULT_GUIDANCE
    den = make_denoiser(unet, guidance)
    sampler = (NestedSampler.from_schedule(den, "progressive", 100, "ddpm") if a.schedule == "progressive"
               else NestedSampler(den, 5, 20, "ddpm"))
    config = {"sampler": sampler.calibration_settings(), "model": model_identity(unet, guidance)}
    fn = classifier_feature_function()[0]
    cals = {"pixel": small_calibration(sampler, config, fn, False),
            "feature": small_calibration(sampler, config, fn, True)}
    shipped = {k: resolve_calibration(c, sampler, unet, guidance)
               for k, c in (("pixel", "auto"), ("feature", "feature"))}
    cals.update({k: c for k, c in shipped.items() if c is not None})
    labels = torch.arange(a.batch) % 10
    times = {"plain": [], **{k: [] for k in cals}}
    timed(sampler, labels, None)  # warm-up
    for _ in range(a.repeats):
        times["plain"].append(timed(sampler, labels, None))
        for k, cal in cals.items():
            times[k].append(timed(sampler, labels, cal))
    print(f"demo configuration {a.schedule} {'+'.join(map(str, sampler.inner_steps))} ddpm, guidance {guidance}, "
          f"batch {a.batch}, {a.threads} thread(s), {a.repeats} alternating repeats"
          f"; shipped calibrations used: {', '.join(k for k, c in shipped.items() if c is not None) or 'none'}")
    print("  ratios to the plain run of the same repeat (median over repeats); CPU = this process's CPU time, "
          "robust on a shared machine")
    for k, v in times.items():
        wall = [x[0] / p[0] for x, p in zip(v, times["plain"])]
        cpu = [x[1] / p[1] for x, p in zip(v, times["plain"])]
        print(f"  {k:8s} wall {statistics.median(wall):.3f}  CPU {statistics.median(cpu):.3f}   "
              f"(median wall {statistics.median(x[0] for x in v):.2f} s, CPU {statistics.median(x[1] for x in v):.2f} s)")


if __name__ == "__main__":
    main()
