"""``nested-diffusion restore``: degrade an image, restore it with nested DDRM on the bundled model, report metrics.

Wiring (cli/main.py): ``restore.add_parser(sub)`` in ``build_parser`` and ``"restore": restore.run`` in
``COMMANDS``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .argtypes import int_at_least as _int_at_least, writable_dir
from ..inverse.operators import MEASUREMENT_SEED_OFFSET
from ..inverse.registry import DEGRADATIONS


def _float_in(name: str, low: float, high: float = math.inf):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected a number, got {s!r}")
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"{name}: must lie in [{low}, {high}], got {v}")
        return v
    return parse


def _t_start(s: str):
    if s == "reference":
        return s
    return _int_at_least("--t-start", 1)(s)


def _box(s: str):
    try:
        parts = [int(p) for p in s.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box: expected four integers TOP,LEFT,HEIGHT,WIDTH, got {s!r}")
    return parts


def add_parser(subparsers) -> argparse.ArgumentParser:
    r = subparsers.add_parser(
        "restore", help="restore a degraded image with nested DDRM (inverse problems, Algorithm 3)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
            "Degrade a clean image (a file or a Fashion-MNIST test image) with a linear operator plus Gaussian "
            "noise, restore it with nested DDRM on the bundled model, and write into --out: clean.png, "
            "degraded.png, restored.png, comparison.png, progression.png/.gif, updates.json and metrics.json. "
            "Prints PSNR (per image, on [0, 1]) and the measurement consistency ‖H x̂ − y‖ for every update."))
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image file; converted to grayscale and resized to the model's size if needed")
    src.add_argument("--index", type=_int_at_least("--index", 0), help="Fashion-MNIST test-set index")
    r.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (for --index)")
    r.add_argument("--degradation", choices=DEGRADATIONS, default="sr", help="the operator H")
    r.add_argument("--factor", type=_int_at_least("--factor", 1), default=4, help="sr: block-averaging factor")
    r.add_argument("--ratio", type=_float_in("--ratio", 0.0, 1.0), default=0.5,
                   help="inpaint: fraction of missing pixels")
    r.add_argument("--mask-seed", type=int, default=0, help="inpaint: seed of the random pixel mask")
    r.add_argument("--box", type=_box, default=None,
                   help="inpaint_box: TOP,LEFT,HEIGHT,WIDTH of the missing rectangle (default: centred half size)")
    r.add_argument("--kernel-size", type=_int_at_least("--kernel-size", 1), default=5, help="deblur: taps (odd)")
    r.add_argument("--kernel-sigma", type=_float_in("--kernel-sigma", 1e-6), default=1.0,
                   help="deblur_gauss: Gaussian width in pixels")
    r.add_argument("--sigma-y", type=_float_in("--sigma-y", 0.0), default=0.0,
                   help="measurement noise std in the model's [-1, 1] units (= 2 × the std in [0, 1] units)")
    r.add_argument("--outer", type=_int_at_least("--outer", 1), default=3, help="outer steps")
    r.add_argument("--inner", type=_int_at_least("--inner", 1), default=10, help="DDRM steps per outer step")
    r.add_argument("--eta", type=_float_in("--eta", 0.0, 1.0), default=0.85, help="DDRM η")
    r.add_argument("--eta-b", type=_float_in("--eta-b", 0.0, 1.0), default=1.0, help="DDRM η_b")
    r.add_argument("--outer-eta", type=_float_in("--outer-eta", 0.0), default=0.0, help="η of the outer DDIM step")
    r.add_argument("--t-start", type=_t_start, default=None,
                   help="top time (default T-1); 'reference' = T - T//(outer*inner), DDRM's grid (950 for 20 steps)")
    r.add_argument("--seed", type=int, default=0,
                   help=f"sampling seed; the measurement noise uses seed + {MEASUREMENT_SEED_OFFSET}")
    r.add_argument("--class", dest="label", default=None,
                   help="restore conditioned on this class (index or name); default: the unconditional model")
    r.add_argument("--guidance", type=_float_in("--guidance", 0.0), default=1.0,
                   help="classifier-free guidance scale with --class (1 = plain conditional model)")
    r.add_argument("--vanilla", action="store_true",
                   help="also run vanilla DDRM with outer×inner steps and write it to OUT/vanilla/")
    r.add_argument("--budget", type=_int_at_least("--budget", 1), default=None, help="max NFE")
    r.add_argument("--deadline", type=_float_in("--deadline", 1e-9), default=None, help="wall-clock seconds")
    r.add_argument("--model", default=None, help="a from_pretrained folder (default: the bundled model)")
    r.add_argument("--out", type=writable_dir("--out"), default=Path("out/restore"), help="output folder")
    r.add_argument("--scale", type=_int_at_least("--scale", 1), default=4, help="pixel upscaling in pictures")
    r.add_argument("--threads", type=_int_at_least("--threads", 1), default=None, help="torch CPU threads")
    r.add_argument("--quiet", action="store_true", help="no per-update lines")
    return r


def load_image(path: str, size: int):
    """(1, 1, size, size) tensor in [−1, 1] from an image file (grayscale; resized with Lanczos if needed)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError
    try:
        im = Image.open(path)
        im.load()
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"--image: cannot read {path!r} as an image ({e})") from None
    im = im.convert("L")
    note = None
    if im.size != (size, size):
        note = f"resized {im.size[0]}×{im.size[1]} to {size}×{size}"
        im = im.resize((size, size), Image.LANCZOS)
    x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())[None, None] / 127.5 - 1.0
    return x, note


def _run_sampler(name, sampler, args, x, y, op, cond, settings, folder, shape, quiet):
    """Stream one sampler, record every update with its PSNR and ‖Hx̂ − y‖; returns (final metrics, final image,
    exit code)."""

    from ..imaging import row, save_png
    from .recorder import AnytimeRecorder
    from ..inverse.metrics import consistency, consistency_rms, psnr

    rec = AnytimeRecorder(folder, {**settings, "method": name, "outer": sampler.outer_steps,
                                   "inner": sampler.inner_steps[0]}, args.scale)
    code = 0
    if not quiet:
        print(f"[{name}] {sampler.outer_steps} outer × {sampler.inner_steps[0]} DDRM steps = {sampler.total_nfe} "
              f"NFE, {args.degradation}, σ_y = {args.sigma_y}")
    try:
        for u in sampler.stream([args.seed], shape, cond, max_nfe=args.budget, deadline=args.deadline):
            rec.add(u)
            p, c = float(psnr(u.x0, x)[0]), float(consistency(op, u.x0, y)[0])
            rec.records[-1].update(psnr=round(p, 4), consistency=round(c, 6))
            if not quiet:
                print(f"  nfe {u.nfe:4d}/{sampler.total_nfe}  outer {u.outer_step}/{u.outer_steps}  "
                      f"t={u.t:3d}  PSNR {p:6.2f} dB  ‖Hx̂−y‖ {c:.4f}  {'final' if u.final else u.source}", flush=True)
    except KeyboardInterrupt:
        code = 130
        print("\ninterrupted: writing the latest result", file=sys.stderr)
    paths = rec.write(interrupted=code == 130)
    if not rec.snapshots:
        return None, None, code
    final = rec.snapshots[-1]
    save_png(row(final, args.scale), folder / "restored.png")
    f = dict(nfe=rec.records[-1]["nfe"], psnr=float(psnr(final, x)[0]), consistency=float(consistency(op, final, y)[0]),
             consistency_rms=float(consistency_rms(op, final, y)[0]))
    print(f"[{name}] final after {f['nfe']} NFE: PSNR {f['psnr']:.2f} dB, ‖Hx̂−y‖ = {f['consistency']:.4f} "
          f"(RMS {f['consistency_rms']:.4f} per measurement, σ_y = {args.sigma_y}); "
          f"wrote {', '.join(str(p) for p in paths + [folder / 'restored.png'])}")
    return f, final, code


def _clean_image(args, size: int):
    """(x, note, label name) from --image or --index (Fashion-MNIST test split)."""
    from ..bundled.data import CLASS_NAMES, load_fashion_mnist
    if args.image is not None:
        x, note = load_image(args.image, size)
        return x, note, None
    images, labels = load_fashion_mnist("test", args.data_dir)
    if args.index >= images.shape[0]:
        raise ValueError(f"--index: {args.index} is out of range; the test set has {images.shape[0]} images "
                         f"(0–{images.shape[0] - 1})")
    return images[args.index:args.index + 1], None, CLASS_NAMES[int(labels[args.index])]


def _prepare(args) -> dict:
    """Every check and the samplers, before any model call; ValueError/TypeError/FileNotFoundError otherwise."""
    import torch

    from ..bundled import load_unet, make_denoiser, parse_classes
    from ..inverse.ddrm import ddrm_sampler, reference_t_start
    from ..inverse.operators import measure
    from ..inverse.registry import make_operator

    model = load_unet(args.model)
    C, size = model.config["in_channels"], model.config["image_size"]
    x, note, label_name = _clean_image(args, size)
    op = make_operator(args.degradation, (C, size, size), ratio=args.ratio, mask_seed=args.mask_seed,
                       box=args.box, factor=args.factor, kernel_size=args.kernel_size, kernel_sigma=args.kernel_sigma)
    if args.label is None:
        cond, guidance = torch.full((1,), model.null_class, dtype=torch.long), 1.0
    else:
        cond, guidance = torch.tensor(parse_classes(args.label)[:1]), args.guidance
    den = make_denoiser(model, guidance, clip_x0=None)   # DDRM wants an unclipped x̂0
    T = den.schedule.num_train_timesteps
    t_start = reference_t_start(T, args.outer * args.inner) if args.t_start == "reference" else args.t_start
    if t_start is not None and not 0 < t_start < T:
        raise ValueError(f"--t-start: must lie in [1, {T - 1}], got {t_start}")
    y = measure(op, x, args.sigma_y, seed=args.seed + MEASUREMENT_SEED_OFFSET)
    runs = [("nested", args.outer, args.inner)] + ([("vanilla", 1, args.outer * args.inner)] if args.vanilla else [])
    samplers = [(name, ddrm_sampler(den, op, y, args.sigma_y, k, n, args.eta, args.eta_b, args.outer_eta, t_start))
                for name, k, n in runs]
    settings = dict(source=args.image if args.image is not None else f"fashion-mnist test[{args.index}]",
                    label=label_name, degradation=args.degradation, operator=repr(op), sigma_y=args.sigma_y,
                    sigma_y_units="[-1, 1] (std in [0, 1] units = sigma_y / 2)", eta=args.eta, eta_b=args.eta_b,
                    outer_eta=args.outer_eta, t_start=T - 1 if t_start is None else t_start, seed=args.seed,
                    measurement_seed=args.seed + MEASUREMENT_SEED_OFFSET, condition=args.label,
                    guidance=guidance, model=args.model or "bundled", budget=args.budget, deadline=args.deadline)
    return dict(x=x, y=y, op=op, cond=cond, note=note, samplers=samplers, settings=settings, shape=(1, C, size, size))


def run(args) -> int:
    import torch

    from ..imaging import row, save_png, tile, to_uint8
    from ..inverse.metrics import psnr
    from ..io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        job = _prepare(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x, y, op = job["x"], job["y"], job["op"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if job["note"] and not args.quiet:
        print(f"note: {job['note']}")
    degraded = op.degraded_view(y)
    psnr_degraded = float(psnr(degraded, x)[0])
    if not args.quiet:
        print(f"degraded view ({'blurred' if args.degradation.startswith('deblur') else 'pseudo-inverse'}): "
              f"PSNR {psnr_degraded:.2f} dB")
    save_png(row(x, args.scale), out / "clean.png")
    save_png(row(degraded, args.scale), out / "degraded.png")
    code, finals, final_x = 0, {}, {}
    for name, sampler in job["samplers"]:
        folder = out if name == "nested" else out / "vanilla"
        f, final, code = _run_sampler(name, sampler, args, x, y, op, job["cond"], job["settings"], folder,
                                      job["shape"], args.quiet)
        if f is not None:
            finals[name], final_x[name] = f, final
        if code:
            break
    cells = [to_uint8(x)[0], to_uint8(degraded)[0]] + [to_uint8(v)[0] for v in final_x.values()]
    save_png(tile(cells, 1, len(cells), args.scale), out / "comparison.png")
    atomic_write_json(out / "metrics.json", {"settings": job["settings"], "psnr_degraded_view": psnr_degraded,
                                             "results": finals,
                                             "comparison_png_columns": ["clean", "degraded"] + list(final_x)})
    return code
