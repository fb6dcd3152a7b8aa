"""Issue 15: search nested schedules under a fixed NFE budget on the bundled model, against vanilla on the same seeds.

A schedule is a JSON object (a list of them in ``--configs FILE``, or the built-in screen of ``--preset``):
  {"name": "5x20", "inner_steps": [20, 20, 20, 20, 20], "outer_times": null, "outer_eta": 0.0,
   "solver": "ddpm", "inner_eta": null, "guidance": 2.0, "guidance_min_t": 0}
``outer_times``: explicit outer grid (null: evenly spaced); ``guidance_min_t``: classifier-free guidance only at
t ≥ this (the unguided model below it; 0 = guidance everywhere); ``guidance_banded``: each inner run guided only
above the next outer time (``guidance_floor`` below it, default 1.0); ``guidance_per_run``: a scale per inner run. Vanilla is the one-outer-step schedule.

For every schedule: FD (project classifier features, Fashion-MNIST test split reference) of the anytime result
at every ``--step`` NFE, the AUC (Δ Σ ln FD), the final FD, and paired bootstrap differences of AUC and final FD
against ``--baseline`` (same seeds, same resampling counts). Samples are cached per chunk (rerun = resume).

Usage: python benchmarks/schedule_search.py --budget 100 --samples 500 --preset diagnose --out runs/schedules
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from nested_diffusion import NestedSampler
from nested_diffusion.bundled import load_unet, make_denoiser
from nested_diffusion.bundled.features import load_feature_classifier
from nested_diffusion.bundled.reference import fashion_reference
from nested_diffusion.evaluation.auc import anytime_auc, nfe_marks
from nested_diffusion.evaluation.features import state_fingerprint
from nested_diffusion.evaluation.runners import FDEvaluator, bootstrap_spread
from nested_diffusion.evaluation.snapshots import SamplerFactory, collect_snapshots
from nested_diffusion.io import atomic_write_json


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


def build(cfg: dict, model, autocast):
    guidance = cfg.get("guidance", 2.0)
    den = make_denoiser(model, guidance, autocast=autocast)
    if cfg.get("guidance_min_t"):
        den = GuidanceBelow(den, make_denoiser(model, 1.0, autocast=autocast), int(cfg["guidance_min_t"]))
    if cfg.get("guidance_per_run"):
        dens = [make_denoiser(model, float(g), autocast=autocast) for g in cfg["guidance_per_run"]]
        den = GuidancePerRun(dens, list(cfg["inner_steps"]), den.schedule.num_train_timesteps - 1)
    if cfg.get("guidance_banded"):
        den = GuidanceBanded(den, make_denoiser(model, float(cfg.get("guidance_floor", 1.0)), autocast=autocast))
    steps = cfg["inner_steps"]
    sampler = NestedSampler(den, len(steps), steps, cfg.get("solver", "ddpm"), cfg.get("inner_eta"),
                            cfg.get("outer_eta", 0.0), outer_times=cfg.get("outer_times"))
    if isinstance(den, GuidanceBanded):
        den.outer_times = [int(t) for t in sampler.times[:-1]]
    return sampler


def evaluate(cfg: dict, args, model, ev: FDEvaluator, marks: list[int]) -> dict:
    sampler = build(cfg, model, args.autocast)
    if sampler.total_nfe != args.budget:
        raise ValueError(f"{cfg['name']}: spends {sampler.total_nfe} NFE, not the budget {args.budget}")
    info = dict(cfg, model=f"TinyUNet-{state_fingerprint(model)}", autocast=args.autocast)
    factory = SamplerFactory(lambda o, i: sampler, (1, 28, 28), lambda idx: torch.tensor([i % 10 for i in idx]), info)
    t0 = time.perf_counter()
    snaps = collect_snapshots(factory, len(cfg["inner_steps"]), sampler.inner_steps[0], args.samples, args.seed, marks,
                              Path(args.out) / "cache", args.chunk, print)
    feats = ev.features(snaps)
    fd, boot = ev(snaps, feats)
    labels = torch.tensor([i % 10 for i in range(args.samples)])
    classes = [ev.ref.extractor.classifier.head(feats[j]).argmax(1) for j in snaps.mark_index]
    agree = float((classes[-1] == labels).float().mean())
    final = snaps.final.float() / 255
    return dict(config=cfg, fd=fd, auc=anytime_auc(dict(zip(marks, fd)), args.budget, args.step), final_fd=fd[-1],
                final_class_agreement=agree,
                # how well the anytime result at each mark predicts the final: same predicted class, pixel RMSE
                same_class_as_final=[float((c == classes[-1]).float().mean()) for c in classes],
                rmse_to_final=[float(((snaps.at(m).float() / 255 - final) ** 2).flatten(1).mean(1).sqrt().mean())
                               for m in marks],
                first_result_nfe=sampler.inner_steps[0] if len(sampler.inner_steps) > 1 else args.budget,
                times=sampler.times[:-1], seconds=time.perf_counter() - t0, _boot=boot)


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
    ap.add_argument("--autocast", choices=("none", "bf16"), default="none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/schedules")
    args = ap.parse_args()
    args.autocast = None if args.autocast == "none" else args.autocast
    torch.set_num_threads(args.threads)
    configs = (PRESETS[args.preset](args.budget) if args.preset else []) + \
        (json.loads(args.configs.read_text()) if args.configs else [])
    if not configs:
        raise SystemExit("error: give --preset or --configs")
    model = load_unet()
    marks = nfe_marks(args.budget, args.step)
    extractor = load_feature_classifier()
    ref = fashion_reference(extractor, heldout=args.samples, cache_dir=Path(args.out) / "reference")
    ev = FDEvaluator(ref, args.samples, args.bootstrap, args.seed)
    rows = [evaluate(cfg, args, model, ev, marks) for cfg in configs]
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
               step=args.step, autocast=args.autocast, baseline=base["config"]["name"], rows=rows,
               metric="FD on the project FashionClassifier's 128-d features (not Inception FID)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.preset or (args.configs.stem if args.configs else "configs")
    atomic_write_json(out / f"schedules-{tag}-{args.budget}-{args.samples}.json", doc)
    print(f"{args.samples} samples, seeds {args.seed}..{args.seed + args.samples - 1}, budget {args.budget} NFE, "
          f"autocast {args.autocast}; differences vs {base['config']['name']} (paired bootstrap std)")
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
