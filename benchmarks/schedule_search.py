"""Issue 15: search nested schedules under a fixed NFE budget on the bundled model, against vanilla on the same seeds.

A schedule is a JSON object (a list of them in ``--configs FILE``, or the built-in screen of ``--preset``):
  {"name": "5x20", "inner_steps": [20, 20, 20, 20, 20], "outer_times": null, "outer_eta": 0.0,
   "solver": "ddpm", "inner_eta": null, "guidance": 2.0, "guidance_min_t": 0}
``outer_times``: explicit outer grid (null: evenly spaced); ``guidance_min_t``: classifier-free guidance only at
t ≥ this (the unguided model below it; 0 = guidance everywhere); ``guidance_banded``: each inner run guided only
above the next outer time (``guidance_floor`` below it, default 1.0); ``guidance_per_run``: a scale per inner run; ``preview_refine``: every inner run starts from the same x_T at
t_start (preview-then-refine: a k-step preview, then N − k steps from the same noise; the outer step is the identity).
Vanilla is the one-outer-step schedule.

Each schedule is sampled once (``previews="all"``) and two images are kept at every mark: the *result* (the last
finished inner run; the first run's x̂0 before it ends) and the current run's *x̂0*. Display rules are then scored
on the same samples: ``result`` (what the stream shows by default), ``x0`` (always the newest x̂0) and ``fill@f``
(the result, but the current run's x̂0 once that run has done ≥ f of its steps; ``--fill``). Rows are named
``NAME`` for the result rule and ``NAME+x0``, ``NAME+fill0.5`` … for the others.

For every schedule: FD (project classifier features, Fashion-MNIST test split reference) of the anytime result
at every ``--step`` NFE, the AUC (Δ Σ ln FD), the final FD, and paired bootstrap differences of AUC and final FD
against ``--baseline`` (same seeds, same resampling counts). Samples are cached per chunk (rerun = resume).

Usage: python benchmarks/schedule_search.py --budget 100 --samples 500 --preset diagnose --out runs/schedules
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from nested_diffusion import NestedSampler
from nested_diffusion.core.grids import CLEAN
from nested_diffusion.core.nested import NestedSolver
from nested_diffusion.bundled import load_unet, make_denoiser
from nested_diffusion.bundled.features import load_feature_classifier
from nested_diffusion.bundled.reference import fashion_reference
from nested_diffusion.evaluation.auc import anytime_auc, nfe_marks
from nested_diffusion.evaluation.features import extract_features, quantize, state_fingerprint
from nested_diffusion.evaluation.runners import FDEvaluator, bootstrap_spread
from nested_diffusion.evaluation.snapshots import Snapshots
from nested_diffusion.io import ChunkCache, atomic_write_json


class GuidanceBelow:
    """The guided denoiser at t ≥ t_min, the unguided one below (both are one NFE per call)."""

    def __init__(self, guided, plain, t_min: int):
        self.guided, self.plain, self.t_min, self.schedule = guided, plain, t_min, guided.schedule

    def __call__(self, x, t, cond=None):
        return (self.guided if t >= self.t_min else self.plain)(x, t, cond)


class GuidancePerRun:
    """Guidance scale per inner run (``scales[k]`` for the k-th run): counts model calls and switches denoisers
    at each run's end; the count restarts at the run's first call (the only call at t = t_start)."""

    def __init__(self, dens: list, run_nfe: list[int], t_start: int):
        self.dens, self.t_start, self.schedule = dens, t_start, dens[0].schedule
        self.ends = [sum(run_nfe[:k + 1]) for k in range(len(run_nfe))]
        self.calls = 0

    def __call__(self, x, t, cond=None):
        if t == self.t_start:
            self.calls = 0
        k = next(i for i, e in enumerate(self.ends) if self.calls < e)
        self.calls += 1
        return self.dens[k](x, t, cond)


class GuidanceBanded:
    """Guidance that does not compound: inner run k (started at outer time t_k) is guided only above the next
    outer time t_{k-1} and uses ``plain`` (a lower scale) below it, so each noise band gets the guided model in
    exactly one inner run, as in vanilla sampling; the last run (from the lowest outer time) is guided to t = 0.
    A new run is detected when t rises between calls. ``outer_times`` is set once the sampler's grid is known."""

    def __init__(self, guided, plain):
        self.guided, self.plain, self.schedule = guided, plain, guided.schedule
        self.outer_times: list[int] = []
        self.prev_t, self.floor = None, 0

    def __call__(self, x, t, cond=None):
        t = int(t)
        if self.prev_t is None or t > self.prev_t:
            self.floor = max((o for o in self.outer_times if o < t), default=-1)
        self.prev_t = t
        return (self.guided if t > self.floor else self.plain)(x, t, cond)


class AutocastModel(torch.nn.Module):
    """The float32 model under bfloat16 autocast: how the studies before issue 23 ran (``--autocast bf16``)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.null_class = model, model.config, model.null_class

    def forward(self, x, t, labels):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x, t, labels).float()


class PreviewRefineSolver(NestedSolver):
    """Preview-then-refine as a nested run: every inner run starts at t_start from the same x_T (the outer step
    returns the state it was given), so run k is an independent run of its own length from the same noise."""

    def grid(self, t_start, n, convention, name="outer_steps"):
        return [t_start] * n + [CLEAN]

    def outer_step(self, S, x, x0_hat, k, t, t_next, n, noise):
        return x


class PreviewRefineSampler(NestedSampler):
    def _solver(self, run):
        return PreviewRefineSolver(run.build_inner(), list(run.inner_steps), run.outer_eta, None, run.grid)


def uniform(name, outer, inner, **kw):
    return dict(name=name, inner_steps=[inner] * outer, **kw)


def per_run(name, steps, **kw):
    return dict(name=name, inner_steps=list(steps), **kw)


PRESETS = {
    "guidance": lambda N: [
        uniform(f"vanilla-ddpm-{N}", 1, N), uniform(f"5x{N // 5}", 5, N // 5),
        uniform(f"vanilla-ddpm-{N}-g1", 1, N, guidance=1.0), uniform(f"5x{N // 5}-g1", 5, N // 5, guidance=1.0),
        uniform(f"vanilla-ddpm-{N}-g1.5", 1, N, guidance=1.5), uniform(f"5x{N // 5}-g1.5", 5, N // 5, guidance=1.5),
        uniform(f"vanilla-ddpm-{N}-gt500", 1, N, guidance_min_t=500),
        uniform(f"5x{N // 5}-gt500", 5, N // 5, guidance_min_t=500),
        uniform(f"5x{N // 5}-g1-outer-eta1", 5, N // 5, guidance=1.0, outer_eta=1.0),
        per_run(f"prog-{N}-outer-eta1", [N // 10, N // 5, 3 * N // 10, 2 * N // 5], outer_eta=1.0),
    ],
    "diagnose": lambda N: [
        uniform(f"vanilla-ddpm-{N}", 1, N), uniform(f"vanilla-ddim-{N}", 1, N, solver="ddim", inner_eta=0.0),
        uniform(f"5x{N // 5}", 5, N // 5), uniform(f"2x{N // 2}", 2, N // 2),
        uniform(f"vanilla-ddpm-{N}-g1", 1, N, guidance=1.0), uniform(f"5x{N // 5}-g1", 5, N // 5, guidance=1.0),
        uniform(f"5x{N // 5}-outer-eta1", 5, N // 5, outer_eta=1.0),
        uniform(f"5x{N // 5}-ddim085", 5, N // 5, solver="ddim", inner_eta=0.85),
    ],
}


def build(cfg: dict, model):
    guidance = cfg.get("guidance", 2.0)
    den = make_denoiser(model, guidance)
    if cfg.get("guidance_min_t"):
        den = GuidanceBelow(den, make_denoiser(model, 1.0), int(cfg["guidance_min_t"]))
    if cfg.get("guidance_per_run"):
        dens = [make_denoiser(model, float(g)) for g in cfg["guidance_per_run"]]
        den = GuidancePerRun(dens, list(cfg["inner_steps"]), den.schedule.num_train_timesteps - 1)
    if cfg.get("guidance_banded"):
        den = GuidanceBanded(den, make_denoiser(model, float(cfg.get("guidance_floor", 1.0))))
    steps = cfg["inner_steps"]
    cls = PreviewRefineSampler if cfg.get("preview_refine") else NestedSampler
    sampler = cls(den, len(steps), steps, cfg.get("solver", "ddpm"), cfg.get("inner_eta"),
                  cfg.get("outer_eta", 0.0), outer_times=cfg.get("outer_times"))
    if isinstance(den, GuidanceBanded):
        den.outer_times = [int(t) for t in sampler.times[:-1]]
    return sampler


def dual_chunk(sampler, seeds: list[int], labels: torch.Tensor, marks: list[int]) -> dict:
    """One chunk sampled once: at every mark the result (last finished run; the first run's x̂0 before it ends)
    and the current run's x̂0, both uint8."""
    result, x0, p, best = [], [], 0, None
    for u in sampler.stream(seeds, (len(seeds), 1, 28, 28), labels, max_nfe=marks[-1], previews="all"):
        if u.source == "inner_result" or u.outer_step == 1:
            best = u.x0
        while p < len(marks) and marks[p] == u.nfe:
            result.append(quantize(best))
            x0.append(quantize(u.x0))
            p += 1
    if p != len(marks):
        raise RuntimeError(f"stream ended at mark {p} of {len(marks)}")
    return dict(result=torch.stack(result), x0=torch.stack(x0), seeds=list(seeds))


def run_position(sampler, mark: int) -> tuple[int, int, int]:
    """(run index, NFE done in that run, its length) at a mark (a run that ends at the mark counts as done)."""
    start = 0
    for k, n in enumerate(sampler.inner_steps):
        if mark <= start + n:
            return k, mark - start, n
        start += n
    raise ValueError(f"mark {mark} beyond the budget")


def display_rules(sampler, marks: list[int], fills: list[float]) -> dict[str, list[int]]:
    """Rule name → per mark: 0 = the result, 1 = the current run's x̂0."""
    pos = [run_position(sampler, m) for m in marks]
    rules = {"": [0] * len(marks)}
    if len(sampler.inner_steps) > 1:
        rules["+x0"] = [0 if done == n else 1 for k, done, n in pos]
        for f in fills:
            rules[f"+fill{f:g}"] = [1 if k > 0 and done < n and done >= f * n else 0 for k, done, n in pos]
    return rules


def evaluate(cfg: dict, args, model, ev: FDEvaluator, marks: list[int]) -> list[dict]:
    sampler = build(cfg, model)
    if sampler.total_nfe != args.budget:
        raise ValueError(f"{cfg['name']}: spends {sampler.total_nfe} NFE, not the budget {args.budget}")
    info = dict(cfg, model=f"TinyUNet-{state_fingerprint(model)}", autocast=args.autocast, marks=marks, dtype=args.dtype,
                inner=sampler.inner_steps, times=[int(t) for t in sampler.times[:-1]], format=2)
    key = json.dumps(info, sort_keys=True)
    cache = ChunkCache(Path(args.out) / "cache" / f"{cfg['name']}-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
                       settings=info)
    t0 = time.perf_counter()
    parts = []
    for start in range(0, args.samples, args.chunk):
        idx = list(range(start, min(args.samples, start + args.chunk)))
        seeds = [args.seed + i for i in idx]
        part, computed = cache.get(f"seed{seeds[0]}-{len(idx)}", lambda: dual_chunk(
            sampler, seeds, torch.tensor([i % 10 for i in idx]), marks))
        if part["seeds"] != seeds:
            raise ValueError(f"cache: {cache.folder} holds other seeds")
        if computed:
            print(f"  {cfg['name']}: samples {idx[-1] + 1}/{args.samples} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        parts.append(part)
    result = torch.cat([p["result"] for p in parts], dim=1)   # (marks, N, 1, 28, 28)
    x0 = torch.cat([p["x0"] for p in parts], dim=1)
    M = len(marks)
    images = [result[j] for j in range(M)] + [x0[j] for j in range(M)]
    feats = [extract_features(ev.ref.extractor, img) for img in images]
    head = ev.ref.extractor.classifier.head
    classes = [head(f).argmax(1) for f in feats]
    labels = torch.tensor([i % 10 for i in range(args.samples)])
    final = result[-1].float() / 255
    rows = []
    for suffix, choice in display_rules(sampler, marks, args.fill).items():
        index = [j + M * c for j, c in enumerate(choice)]
        snaps = Snapshots(images, index, marks, [], [], [], {})
        fd, boot = ev(snaps, feats)
        shown = [images[i] for i in index]
        rmse = [float(((img.float() / 255 - final) ** 2).flatten(1).mean(1).sqrt().mean()) for img in shown]
        same = [float((classes[i] == classes[index[-1]]).float().mean()) for i in index]
        rows.append(dict(config=dict(cfg, name=cfg["name"] + suffix), display=suffix[1:] or "result",
                         shows=["x0" if c else "result" for c in choice], fd=fd,
                         auc=anytime_auc(dict(zip(marks, fd)), args.budget, args.step), final_fd=fd[-1],
                         final_class_agreement=float((classes[index[-1]] == labels).float().mean()),
                         same_class_as_final=same, rmse_to_final=rmse,
                         mean_rmse_to_final=sum(rmse) / M, mean_same_class=sum(same) / M,
                         first_result_nfe=sampler.inner_steps[0] if len(sampler.inner_steps) > 1 else args.budget,
                         times=sampler.times[:-1], seconds=time.perf_counter() - t0, _boot=boot))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=50000, help="sample i uses seed + i (default: unused by the eval runs)")
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=250)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--configs", type=Path, default=None, help="JSON list of schedules")
    ap.add_argument("--baseline", default=None, help="name of the schedule differences are taken to "
                                                    "(default: the first)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the bundled model's compute dtype, as `generate --dtype` (bfloat16: a weight copy)")
    ap.add_argument("--autocast", choices=("none", "bf16"), default=None,
                    help="before issue 23: bfloat16 autocast (kept to rerun the older logs; numerics differ from "
                         "--dtype bfloat16 by rounding)")
    ap.add_argument("--fill", type=float, nargs="*", default=[0.25, 0.5, 0.75],
                    help="fill@f display rules to score (fractions of a run's steps)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/schedules")
    args = ap.parse_args()
    args.autocast = None if args.autocast in (None, "none") else args.autocast
    torch.set_num_threads(args.threads)
    configs = (PRESETS[args.preset](args.budget) if args.preset else []) + \
        (json.loads(args.configs.read_text()) if args.configs else [])
    if not configs:
        raise SystemExit("error: give --preset or --configs")
    model = load_unet(dtype=args.dtype)
    if args.autocast:
        model = AutocastModel(model)
    marks = nfe_marks(args.budget, args.step)
    extractor = load_feature_classifier()
    ref = fashion_reference(extractor, heldout=args.samples, cache_dir=Path(args.out) / "reference")
    ev = FDEvaluator(ref, args.samples, args.bootstrap, args.seed)
    rows = [row for cfg in configs for row in evaluate(cfg, args, model, ev, marks)]
    base = next((r for r in rows if r["config"]["name"] == args.baseline), rows[0])
    def auc_reps(boot):
        return torch.tensor([anytime_auc(dict(zip(marks, b.tolist())), args.budget, args.step) for b in boot])
    base_auc, base_final = (None, None) if base["_boot"] is None else (auc_reps(base["_boot"]), base["_boot"][:, -1])
    for r in rows:
        if base_auc is not None and r is not base:
            r["auc_minus_baseline"] = dict(point=r["auc"] - base["auc"], **bootstrap_spread(auc_reps(r["_boot"]) - base_auc))
            r["final_minus_baseline"] = dict(point=r["final_fd"] - base["final_fd"],
                                             **bootstrap_spread(r["_boot"][:, -1] - base_final))
        r.pop("_boot")
    doc = dict(budget=args.budget, samples=args.samples, seeds=[args.seed, args.seed + args.samples - 1],
               step=args.step, autocast=args.autocast, dtype=args.dtype, baseline=base["config"]["name"], rows=rows,
               metric="FD on the project FashionClassifier's 128-d features (not Inception FID)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.preset or (args.configs.stem if args.configs else "configs")
    atomic_write_json(out / f"schedules-{tag}-{args.budget}-{args.samples}.json", doc)
    print(f"{args.samples} samples, seeds {args.seed}..{args.seed + args.samples - 1}, budget {args.budget} NFE, "
          f"dtype {args.dtype}, autocast {args.autocast}; differences vs {base['config']['name']} (paired bootstrap std)")
    for r in rows:
        d = r.get("final_minus_baseline")
        rel = f"{100 * d['point'] / base['final_fd']:+.1f}% ± {100 * d['std'] / base['final_fd']:.1f}" if d else "—"
        print(f"{r['config']['name']:28s} AUC {r['auc']:7.2f}  final FD {r['final_fd']:.4f} ({rel})  "
              f"class agreement {r['final_class_agreement']:.3f}  first result @{r['first_result_nfe']}  "
              f"{r['seconds']:.0f} s")
        print(f"{'':28s} same class as the final at each mark: "
              + " ".join(f"{v:.2f}" for v in r["same_class_as_final"]) + "; RMSE to the final: "
              + " ".join(f"{v:.3f}" for v in r["rmse_to_final"]))
    print(f"noise floor ln: {math.log(ev.fd.of_features(ref.heldout[:args.samples])):.3f}")


if __name__ == "__main__":
    main()
