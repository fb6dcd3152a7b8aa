"""Per-sample random streams: sample i draws all its noise from its own generator, so the same seed gives the
same image whatever the batch size or process count."""
from __future__ import annotations

from typing import Sequence

import torch


class NoiseSource:
    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds: need at least one seed (one per sample)")
        self.seeds = seeds
        self.device, self.dtype = torch.device(device), dtype
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]

    @property
    def batch_size(self) -> int:
        return len(self._gens)

    def randn(self, sample_shape: Sequence[int]) -> torch.Tensor:
        """A (B, *sample_shape) standard normal tensor, row i from generator i (drawn on CPU, then moved)."""
        rows = [torch.randn(tuple(sample_shape), generator=g, dtype=torch.float32) for g in self._gens]
        return torch.stack(rows).to(device=self.device, dtype=self.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self._gens):
            raise ValueError(f"noise: batch of {x.shape[0]} does not match the {len(self._gens)} seeds")
        return self.randn(x.shape[1:]).to(device=x.device, dtype=x.dtype)


def as_noise_source(seeds: "NoiseSource | Sequence[int] | int", batch_size: int | None = None,
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> NoiseSource:
    """Accept a NoiseSource, a list of seeds (one per sample) or one base seed (samples get base, base+1, …)."""
    if isinstance(seeds, NoiseSource) or all(hasattr(seeds, a) for a in ("randn", "randn_like", "batch_size")):
        return seeds  # any noise object with the NoiseSource interface (e.g. a diffusers-generator adapter)
    if isinstance(seeds, int):
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size: must be ≥ 1 when one base seed is given, got {batch_size}")
        seeds = range(seeds, seeds + batch_size)
    return NoiseSource(list(seeds), device, dtype)
