"""Web demo latency on the bundled model, demo configuration (the page's default 4 classes, seed 0, the
progressive schedule at 5 × 20 = 100 NFE — 20 + 20 + 60 learned-variance DDPM inner steps — guidance 1.25),
measured side by side in one run:

* click-to-first-image: from the Generate click to the first picture in the page (headless Chromium, Playwright);
* sampling speed with the page attached (the server's job time for the whole run, reported in the page's final
  status) vs the bare library API (``NestedSampler.stream`` on the same settings, in the same process);
  the ratio bare time / page time is the page's relative speed. On a loaded machine wall times depend on the
  scheduler, so the CPU seconds of this process per run (bare; page: job + rendering + Gradio) are printed too.

Targets (issue 12, 2 cores): click-to-first-image ≤ 1.5 s; relative speed ≥ 0.9.
Usage: python benchmarks/web_latency.py [--repeats 5] [--threads 1]      (needs the test extra and Chromium)
"""
from __future__ import annotations

import argparse
import re
import socket
import statistics
import time

import torch

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking"]
CLASSES = ["Sneaker", "Bag", "Dress", "Ankle boot"]   # the page's default selection
WATCH = """() => new Promise(resolve => {
  const t0 = performance.now(); let first = null;
  const poll = () => {
    const img = document.querySelector('#nd-image img');
    if (first === null && img && img.getAttribute('src') && img.complete && img.naturalWidth > 0)
      first = performance.now() - t0;                      // the first picture is loaded and drawn
    const s = document.querySelector('#nd-status').innerText;
    if (s.includes('Done at NFE')) resolve({first: first, done: performance.now() - t0, status: s});
    else requestAnimationFrame(poll);
  };
  document.querySelector('#nd-generate').click(); poll();
})"""


def bare_run(backend, prep) -> tuple[float, float]:
    """The library path: the same sampler the page's job builds, consumed without rendering.
    Returns (wall seconds, CPU seconds of this process)."""
    sampler = backend.sampler(prep.run)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in sampler.stream(prep.seeds, (prep.batch, 1, 28, 28), prep.cond):
        pass
    return time.perf_counter() - t0, time.process_time() - c0


def page_run(page, url) -> tuple[float, float, float, float]:
    """(click→first image, click→done, the job's sampling time from the page's status, CPU seconds of this
    process — server: job, rendering, Gradio — from the click to done)."""
    page.goto(url)
    page.wait_for_selector("#nd-generate")
    c0 = time.process_time()
    out = page.evaluate(WATCH)
    cpu = time.process_time() - c0
    job_s = float(re.search(r"· ([0-9.]+) s$", out["status"].strip()).group(1))
    return out["first"] / 1000.0, out["done"] / 1000.0, job_s, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from playwright.sync_api import sync_playwright

    from nested_diffusion.web import BundledBackend, JobRequest, Limits
    from nested_diffusion.web.app import build_app, launch_app

    backend = BundledBackend()
    prep = backend.prepare(JobRequest(classes=CLASSES, seed=0), Limits())   # the family's defaults, as the page
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(backend)
    _, url, _ = launch_app(demo, port=port, block=False, quiet=True)
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page_run(page, url)                                   # warm-up (page assets, first model calls)
        bare_run(backend, prep)
        for _ in range(args.repeats):                         # interleaved, so load changes hit both alike
            bare, bare_cpu = bare_run(backend, prep)
            first, done, job, cpu = page_run(page, url)
            rows.append((bare, job, first, done, bare_cpu, cpu))
            print(f"bare {bare:6.3f} s (CPU {bare_cpu:5.2f} s) | page: job {job:6.3f} s, click→first image "
                  f"{first:6.3f} s, click→done {done:6.3f} s (server CPU {cpu:5.2f} s) | speed ratio "
                  f"{bare / job:5.3f}", flush=True)
        browser.close()
    demo.close()
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"\nmedian of {args.repeats} (batch {len(CLASSES)}, progressive 20+20+60 ddpm, guidance "
          f"{backend.default_guidance}, seed 0, "
          f"{args.threads} thread(s)):")
    print(f"  click-to-first-image {med[2]:.3f} s (target ≤ 1.5 s)")
    print(f"  sampling speed, page attached / bare API = {med[0] / med[1]:.3f} (target ≥ 0.9); "
          f"bare {med[0]:.3f} s, page job {med[1]:.3f} s, click→done {med[3]:.3f} s")
    print(f"  CPU per run (robust to other load): bare {med[4]:.2f} s, page (whole server process) {med[5]:.2f} s,"
          f" ratio bare / page = {med[4] / med[5]:.3f}")


if __name__ == "__main__":
    main()
