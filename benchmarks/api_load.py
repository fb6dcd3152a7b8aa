"""Load benchmark of ``nested-diffusion api`` on the bundled model (loopback only; bounded in requests and time).

Starts one server process (``nested-diffusion api --threads T`` on 127.0.0.1) and drives it over HTTP with the
``openai`` client from threads of this process. Requests: one image, the family's default run (progressive
20 + 20 + 60 DDPM at 100 NFE, guidance 1.25), seeds 0, 1, 2, …

(a) throughput: R requests one at a time, then the same R requests from 8 concurrent clients; the ratio of
    requests per second (target ≥ 1.8×) and whether every image matches (within one uint8 level) across the two.
(b) open-loop arrivals (Poisson, fixed seed) at 1× and 2× the capacity measured in (a), each request with
    ``deadline_ms`` = 2 × the unloaded single-request time (a): nested (no steps given: the server picks the
    schedule that fits the deadline at its load) and, under the same arrival times, vanilla (one outer step of
    100 inner steps, the same solver; a run cut by the deadline returns its x̂0). Reported: the share of requests
    whose returned image is a finished one produced by the deadline, and p50/p99 of the time to the first
    finished image (client clock; requests that never got one count as infinite).
(c) memory: the server's RSS after N1 and after N2 requests (2 outer × 5 inner steps each, 8 clients).

Usage: python benchmarks/api_load.py [--threads 2] [--requests 16] [--arrivals 24] [--rss 100 1000]
"""
from __future__ import annotations

import argparse
import base64
import io
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VANILLA = {"outer_steps": 1, "inner_steps": 100}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-m", "nested_diffusion.cli", "api", "--port", str(port),
                             "--threads", str(threads), "--queue-size", "256", "--max-active", "32"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import httpx
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("the server exited before answering")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            return proc, port
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer within 180 s")


def decode(b64: str) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def make_client(port: int):
    import openai
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=600)


def generate(port: int, seed: int, **extra) -> tuple[np.ndarray, dict, float]:
    t0 = time.perf_counter()
    r = make_client(port).images.generate(prompt="sneaker", extra_body={"seed": seed, **extra})
    return decode(r.data[0].b64_json), r.model_extra, time.perf_counter() - t0


def streamed(port: int, seed: int, start: float, prompt: str = "sneaker", **extra) -> dict:
    """One streamed request sent at perf_counter time ``start``: the time to its first finished image and what
    it returned (the returned image as b64)."""
    delay = start - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    t0 = time.perf_counter()
    first = None
    final = {}
    image = None
    for ev in make_client(port).images.generate(prompt=prompt, stream=True, partial_images=3,
                                                extra_body={"seed": seed, **extra}):
        x = ev.model_extra
        if first is None and x.get("finished"):
            first = time.perf_counter() - t0
        if ev.type == "image_generation.completed":
            final, image = x, ev.b64_json
    ok = bool(final.get("finished") and final.get("deadline_met"))
    return {"first": first if first is not None else math.inf, "ok": ok, "nfe": final.get("nfe"),
            "schedule": final.get("schedule"), "image": image}


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def fmt(s: float) -> str:
    return "∞" if math.isinf(s) else f"{s:.2f} s"


def throughput(port: int, n: int) -> tuple[float, float, float, int]:
    t0 = time.perf_counter()
    solo = [generate(port, i) for i in range(n)]
    t_solo = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        many = list(pool.map(lambda i: generate(port, i), range(n)))
    t_many = time.perf_counter() - t0
    worst = max(int(np.abs(a[0].astype(int) - b[0].astype(int)).max()) for a, b in zip(solo, many))
    return t_solo, t_many, statistics.median(s[2] for s in solo), worst


def open_loop(port: int, rate: float, count: int, deadline_ms: float, seed: int, extra: dict,
              classes: bool = False) -> list[dict]:
    """``count`` Poisson arrivals at ``rate``; request i uses seed i (and, with ``classes``, class i % 10)."""
    from nested_diffusion.bundled.data import CLASS_NAMES
    rng = random.Random(seed)
    t, starts = time.perf_counter() + 0.5, []
    for _ in range(count):
        t += rng.expovariate(rate)
        starts.append(t)
    prompt = (lambda i: CLASS_NAMES[i % 10]) if classes else (lambda i: "sneaker")
    with ThreadPoolExecutor(min(count, 256)) as pool:
        return list(pool.map(lambda a: streamed(port, a[0], a[1], prompt(a[0]), deadline_ms=deadline_ms, **extra),
                             enumerate(starts)))


def served_fd(results: dict[str, list[dict]], boot: int = 200) -> str:
    """FD (the bundled classifier's features, as docs/RESULTS.md) of each sampler's served images against the
    Fashion-MNIST test split, and the paired bootstrap of nested − vanilla over requests."""
    import torch
    from nested_diffusion.bundled.features import load_feature_classifier
    from nested_diffusion.bundled.reference import fashion_reference
    from nested_diffusion.evaluation.features import dequantize, extract_features
    from nested_diffusion.evaluation.frechet import FeatureStats, frechet_distance
    ext = load_feature_classifier().eval()
    ref = fashion_reference(ext, heldout=500).stats.to_feature_stats()
    feats = {}
    for name, res in results.items():
        gray = [decode(r["image"]) for r in res]                                  # PNGs: grey or grey as RGB
        imgs = torch.from_numpy(np.stack([g[..., 0] if g.ndim == 3 else g for g in gray]))   # (N, 28, 28) uint8
        feats[name] = extract_features(ext, dequantize(imgs.reshape(len(res), 1, 28, 28)))
    fd = {n: frechet_distance(FeatureStats.from_features(f), ref) for n, f in feats.items()}
    g = np.random.default_rng(0)
    n = len(next(iter(feats.values())))
    diffs = []
    for _ in range(boot):
        i = torch.from_numpy(g.integers(0, n, n))
        d = {k: frechet_distance(FeatureStats.from_features(f[i]), ref) for k, f in feats.items()}
        diffs.append(d["nested"] - d["vanilla"])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return (f"FD of the served images ({n} each, bundled-classifier features vs the Fashion-MNIST test split): "
            f"nested {fd['nested']:.3f}, vanilla {fd['vanilla']:.3f}; nested − vanilla "
            f"{fd['nested'] - fd['vanilla']:+.3f} (paired bootstrap 95%: {lo:+.3f} … {hi:+.3f})")


def rss_mb(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2 ** 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    p.add_argument("--requests", type=int, default=16, help="requests of the throughput phase (a)")
    p.add_argument("--arrivals", type=int, default=24, help="requests per open-loop run (b)")
    p.add_argument("--rss", type=int, nargs=2, default=(100, 1000), metavar=("N1", "N2"),
                   help="RSS after N1 and N2 requests (c)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    p.add_argument("--fd", type=int, default=0, metavar="N",
                   help="also N arrivals per sampler at 2x capacity, classes cycling through all ten, and the FD of "
                        "the images nested and vanilla served under the same arrivals and deadline (0: skip)")
    p.add_argument("--skip-rss", action="store_true", help="skip (c)")
    p.add_argument("--skip-open-loop", action="store_true", help="skip the 40-arrival rows of (b)")
    args = p.parse_args(argv)
    proc, port = start_server(args.threads)
    try:
        generate(port, 0)                                            # warm: first call of every code path
        t_solo, t_many, single, worst = throughput(port, args.requests)
        cap = args.requests / t_many
        print(f"(a) {args.requests} requests, default run (100 NFE): one at a time {args.requests / t_solo:.2f} "
              f"req/s (median {single:.2f} s each), 8 concurrent clients {cap:.2f} req/s = "
              f"{t_solo / t_many:.2f}x; largest pixel difference solo vs batched: {worst} uint8 level(s)",
              flush=True)
        deadline_ms = 2000 * single
        print(f"(b) deadline_ms = 2 x {single:.2f} s = {deadline_ms:.0f} ms, {args.arrivals} Poisson arrivals "
              f"per run (seed {args.seed})", flush=True)
        print("| load | sampler | finished by deadline | p50 first finished | p99 first finished | NFE (median) |")
        print("|---|---|---|---|---|---|")
        for mult in (() if args.skip_open_loop else (1, 2)):
            for name, extra in (("nested", {}), ("vanilla", VANILLA)):
                res = open_loop(port, mult * cap, args.arrivals, deadline_ms, args.seed + mult, extra)
                firsts = [r["first"] for r in res]
                share = sum(r["ok"] for r in res) / len(res)
                nfe = statistics.median(r["nfe"] or 0 for r in res)
                print(f"| {mult}x ({mult * cap:.2f} req/s) | {name} | {100 * share:.0f}% | {fmt(pct(firsts, .5))} | "
                      f"{fmt(pct(firsts, .99))} | {nfe:.0f} |", flush=True)
                time.sleep(1.0)
        if args.fd:
            served = {name: open_loop(port, 2 * cap, args.fd, deadline_ms, args.seed + 7, extra, classes=True)
                      for name, extra in (("nested", {}), ("vanilla", VANILLA))}
            share = {k: sum(r["ok"] for r in v) / len(v) for k, v in served.items()}
            print(f"(b') {args.fd} arrivals per sampler at 2x: finished by the deadline nested "
                  f"{100 * share['nested']:.0f}%, vanilla {100 * share['vanilla']:.0f}%", flush=True)
            print(f"(b') {served_fd(served)}", flush=True)
        if args.skip_rss:
            return 0
        n1, n2 = args.rss
        small = {"outer_steps": 2, "inner_steps": 5}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: generate(port, i, **small), range(n1)))
            r1 = rss_mb(proc.pid)
            t0 = time.perf_counter()
            list(pool.map(lambda i: generate(port, i, **small), range(n1, n2)))
            r2 = rss_mb(proc.pid)
        print(f"(c) server RSS after {n1} requests {r1:.0f} MiB, after {n2} {r2:.0f} MiB "
              f"({100 * (r2 / r1 - 1):+.1f}%; {n2 - n1} requests of 2 x 5 NFE in {time.perf_counter() - t0:.0f} s)")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
