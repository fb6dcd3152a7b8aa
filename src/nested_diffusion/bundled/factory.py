"""The bundled model as a ``SamplerFactory`` for the evaluation runners."""
from __future__ import annotations

import torch

from ..core.nested import NestedSampler
from ..evaluation.features import state_fingerprint
from ..evaluation.snapshots import SamplerFactory
from .denoiser import DEFAULT_GUIDANCE, load_unet, make_denoiser


def bundled_factory(model=None, guidance: float | None = None, solver: str = "ddpm", inner_eta=None,
                    outer_eta=0.0, grid: str = "clean", noise_prefetch: int = 1,
                    noise_workers: int = 1) -> SamplerFactory:
    """The bundled Fashion-MNIST UNet (or any TinyUNet) with CFG in the inner process; sample i gets label i % 10.
    Sampling runs on the model's device; the device type is part of the cache key (float results differ)."""
    model = load_unet() if model is None else model
    guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)
    den = make_denoiser(model, guidance)
    classes = int(model.config["num_classes"])
    c = int(model.config["in_channels"])
    size = int(model.config["image_size"])

    def build(outer: int, inner: int) -> NestedSampler:
        return NestedSampler(den, outer, inner, solver, inner_eta, outer_eta, grid)

    def build_schedule(name: str, total_nfe: int) -> NestedSampler:  # a named schedule (core.schedules)
        return NestedSampler.from_schedule(den, name, total_nfe, solver, inner_eta, outer_eta, grid)

    device = next(model.parameters()).device
    info = dict(model=f"TinyUNet-{state_fingerprint(model)}", guidance=guidance, solver=solver,
                inner_eta=inner_eta, outer_eta=outer_eta, grid=grid, labels="sample index % num_classes")
    if device.type != "cpu":
        info["device"] = device.type
    return SamplerFactory(build, (c, size, size), lambda idx: torch.tensor([i % classes for i in idx]), info,
                          str(device), noise_prefetch, noise_workers, build_schedule)
