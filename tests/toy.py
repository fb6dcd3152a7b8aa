"""A tiny, exact sampler factory for fast checks of the evaluation layer: the analytic Gaussian-mixture denoiser
on small 1×S×S 'images' (values inside [−1, 1]). ``calls`` counts denoiser calls (resume tests)."""
from __future__ import annotations

import torch

from nested_diffusion.core.analytic import GaussianMixtureDenoiser
from nested_diffusion.core.nested import NestedSampler
from nested_diffusion.evaluation.snapshots import SamplerFactory


class CountingMixture(GaussianMixtureDenoiser):
    """The exact mixture denoiser; ``fail_after``: raise KeyboardInterrupt at that call (interruption tests)."""

    def __init__(self, *args, fail_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, x, t, cond=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return super().__call__(x, t, cond)


def mixture_images(size: int = 8, components: int = 3, seed: int = 0, std: float = 0.15,
                   fail_after: int | None = None) -> CountingMixture:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(components, size * size, generator=g) * 1.2 - 0.6)
    return CountingMixture(means, [std] * components, schedule="linear", fail_after=fail_after)


def toy_factory(denoiser: GaussianMixtureDenoiser, size: int = 8, solver: str = "ddim", inner_eta=0.85,
                tag: str = "toy") -> SamplerFactory:
    """Images of shape (1, size, size) sampled from ``denoiser`` (unconditional)."""
    def build(outer: int, inner: int) -> NestedSampler:
        return NestedSampler(denoiser, outer, inner, solver, inner_eta if solver == "ddim" else None)

    info = dict(model=f"gaussian-mixture-{tag}", solver=solver, inner_eta=inner_eta, guidance=None)
    return SamplerFactory(build, (1, size, size), None, info)


def calibrated_classifier(x, dim=16, seed=0):
    """A random FashionClassifier whose batch-norm statistics are those of ``x`` (a feature network for FD)."""
    from nested_diffusion.bundled import FashionClassifier
    torch.manual_seed(seed)
    clf = FashionClassifier(feature_dim=dim)
    for m in clf.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        clf.train()
        clf(x)
    return clf.eval()
