"""The bundled model as a ``SamplerFactory`` for the evaluation runners."""
from __future__ import annotations

import torch

from ..core.nested import NestedSampler
from ..evaluation.features import state_fingerprint
from ..evaluation.snapshots import SamplerFactory
from ..core.run import resolve_run
from .denoiser import DEFAULT_GUIDANCE, RUN_DEFAULTS, load_unet, make_denoiser


def bundled_factory(model=None, guidance: float | None = None, solver: str | None = None, inner_eta=None,
                    outer_eta=None, grid: str | None = None, noise_prefetch: int = 1,
                    noise_workers: int = 1) -> SamplerFactory:
    """The bundled Fashion-MNIST UNet (or any TinyUNet) with CFG in the inner process; sample i gets label i % 10.
    Sampling runs on the model's device; the device type is part of the cache key (float results differ)."""
    model = load_unet() if model is None else model
    guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)
    den = make_denoiser(model, guidance)
    classes = int(model.config["num_classes"])
    c = int(model.config["in_channels"])
    size = int(model.config["image_size"])

    options = dict(inner_solver=solver or RUN_DEFAULTS.inner_solver, inner_eta=inner_eta, outer_eta=outer_eta,
                   grid=grid)
    run = resolve_run(defaults=RUN_DEFAULTS, outer_steps=1, inner_steps=1, **options)   # validates them once

    def build(outer: int, inner: int) -> NestedSampler:
        return NestedSampler.from_run(den, run.replace(inner_steps=(inner,) * outer, schedule="uniform"))

    def build_schedule(name, total_nfe: int | None) -> NestedSampler:  # a named schedule (core.schedules)
        return NestedSampler.from_run(den, resolve_run(defaults=RUN_DEFAULTS, schedule=name, nfe=total_nfe,
                                                       **options))

    device = next(model.parameters()).device
    info = dict(model=f"TinyUNet-{state_fingerprint(model)}", guidance=guidance, solver=run.solver_name,
                inner_eta=run.inner_eta, outer_eta=run.outer_eta, grid=run.grid, labels="sample index % num_classes")
    compute = getattr(model, "compute_dtype", None)
    if compute is not None:   # part of the cache key and of sample manifests (float32 keys stay as before)
        info["dtype"] = str(compute).replace("torch.", "")
    if device.type != "cpu":
        info["device"] = device.type
    return SamplerFactory(build, (c, size, size), lambda idx: torch.tensor([i % classes for i in idx]), info,
                          str(device), noise_prefetch, noise_workers, build_schedule)
