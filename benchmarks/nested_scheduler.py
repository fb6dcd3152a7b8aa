"""Overhead of the generic nested path: a stock pipeline with ``NestedScheduler`` (final image only) against the
same stock pipeline with its own scheduler, at equal model calls (K outer × N inner against K·N stock steps),
measured side by side in one process (same threads, float32, interleaved repeats, medians). The tiny random-weight
fixtures of the tests on the CPU: their model is so small that the wrapper's bookkeeping is visible; on a real
model it is the same absolute cost against seconds per step.

    python benchmarks/nested_scheduler.py [--families flux,flux2,qwen-image,z-image,chroma,wan,sdxl]
                                          [--outer 4] [--inner 7] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(family: str):
    from fixtures_any import BUILDERS, embeds
    if family in BUILDERS:
        kw = dict(embeds(family), height=16, width=16)
        if family == "wan":
            kw["num_frames"] = 5
        return BUILDERS[family](), kw
    import fixtures_modern
    pipe = getattr(fixtures_modern, f"tiny_{family}")()
    g = torch.Generator().manual_seed(3)
    dim, pooled = {"flux": (32, 32), "sdxl": (64, 32), "sd3": (64, 64)}[family]
    kw = dict(prompt_embeds=torch.randn(1, 8, dim, generator=g), pooled_prompt_embeds=torch.randn(1, pooled,
                                                                                                   generator=g),
              height=16, width=16)
    if family != "flux":
        kw.update(negative_prompt_embeds=torch.randn(1, 8, dim, generator=g),
                  negative_pooled_prompt_embeds=torch.randn(1, pooled, generator=g))
    return pipe, kw


def measure(family: str, outer: int, inner: int, repeats: int) -> dict:
    from nested_diffusion.pipelines import NestedScheduler
    pipe, kw = build(family)
    stock_scheduler = pipe.scheduler
    calls = [0]
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) \
        if hasattr(pipe, "transformer") else pipe.unet.register_forward_pre_hook(
            lambda *a: calls.__setitem__(0, calls[0] + 1))

    def stock():
        pipe.scheduler = stock_scheduler
        return pipe(**kw, num_inference_steps=outer * inner, output_type="pt",
                    generator=torch.Generator().manual_seed(0))

    def nested():
        pipe.scheduler = NestedScheduler(stock_scheduler, outer_steps=outer, outer_eta=0.0)
        try:
            return pipe(**kw, num_inference_steps=inner, output_type="pt", generator=torch.Generator().manual_seed(0))
        finally:
            pipe.scheduler = stock_scheduler

    times, counted = {"stock": [], "nested": []}, {}
    with torch.no_grad():
        stock(), nested()                                   # warm-up
        for _ in range(repeats):
            for name, fn in (("stock", stock), ("nested", nested)):
                calls[0] = 0
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                counted.setdefault(name, calls[0])          # CFG families may call the model twice per step
                if calls[0] != counted["stock"] or calls[0] % (outer * inner):
                    raise RuntimeError(f"{family} {name}: {calls[0]} model calls, stock {counted['stock']}")
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="flux,flux2,flux2-klein,qwen-image,z-image,chroma,wan,sdxl")
    p.add_argument("--outer", type=int, default=4)
    p.add_argument("--inner", type=int, default=7)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), float32, CPU; {a.outer} outer × {a.inner} inner "
          f"= {a.outer * a.inner} steps each (model calls counted, equal); medians of {a.repeats} interleaved runs")
    print(f"{'family':<12} {'stock s':>9} {'nested s':>9} {'nested/stock':>13}")
    for fam in a.families.split(","):
        r = measure(fam, a.outer, a.inner, a.repeats)
        print(f"{fam:<12} {r['stock']:>9.4f} {r['nested']:>9.4f} {r['nested'] / r['stock']:>13.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
