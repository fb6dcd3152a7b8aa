"""Per-sample random streams: sample i draws all its noise from its own generator, so the same seed gives the
same image whatever the batch size or process count."""
from __future__ import annotations

import math
from typing import Sequence

import torch


class NoiseSource:
    """Row i of every draw comes from generator i, seeded with ``seeds[i]`` (CPU generators, then moved).

    ``prefetch`` > 1 draws that many requests' worth of noise per generator at once and serves later requests
    from the buffer (on ``device``), split over ``workers`` threads: far fewer Python-level calls at large batch
    sizes (evaluation on a GPU). A CPU generator's stream is cut at the same points when every request is a
    multiple of 16 elements (torch fills normals in 16-value blocks), so the values are then bit-identical to
    ``prefetch=1`` (tested); other sizes stay deterministic per seed but follow another cut of the stream."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 prefetch: int = 1, workers: int = 1):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds: need at least one seed (one per sample)")
        for name, v in (("prefetch", prefetch), ("workers", workers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be an integer ≥ 1, got {v!r}")
        self.seeds = seeds
        self.device, self.dtype = torch.device(device), dtype
        self.prefetch, self.workers = prefetch, workers
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]
        self._buf, self._pos = None, 0   # (B, L) float32 on device, and the next unread column

    @property
    def batch_size(self) -> int:
        return len(self._gens)

    def _draw(self, n: int) -> torch.Tensor:
        """(B, n) float32 on CPU, n fresh values from each generator (split over ``workers`` threads)."""
        out = torch.empty(len(self._gens), n)
        step = -(-len(self._gens) // self.workers)

        def fill(lo):  # torch releases the GIL inside randn, so the threads run in parallel
            for g, row in zip(self._gens[lo:lo + step], out[lo:lo + step]):
                torch.randn(n, generator=g, out=row)
        starts = range(0, len(self._gens), step)
        if len(starts) == 1:
            fill(0)
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(len(starts)) as pool:
                list(pool.map(fill, starts))
        return out

    def randn(self, sample_shape: Sequence[int]) -> torch.Tensor:
        """A (B, *sample_shape) standard normal tensor, row i from generator i."""
        shape = tuple(int(s) for s in sample_shape)
        n = math.prod(shape)
        left = 0 if self._buf is None else self._buf.shape[1] - self._pos
        if left < n:   # refill: the unread rest, then `prefetch` requests' worth of fresh values
            fresh = self._draw(n * self.prefetch - left).to(self.device)
            self._buf = fresh if left == 0 else torch.cat([self._buf[:, self._pos:], fresh], dim=1)
            self._pos = 0
        out = self._buf[:, self._pos:self._pos + n]
        self._pos += n
        return out.reshape(len(self._gens), *shape).to(dtype=self.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self._gens):
            raise ValueError(f"noise: batch of {x.shape[0]} does not match the {len(self._gens)} seeds")
        return self.randn(x.shape[1:]).to(device=x.device, dtype=x.dtype)


class DeviceNoiseSource(NoiseSource):
    """Opt-in on-device noise (``--noise device``): sample i draws from its own ``torch.Generator`` created on
    ``device`` (on CUDA torch's counter-based Philox), seeded with ``seeds[i]``, so nothing is drawn on the CPU
    or copied to the device. ``prefetch`` requests' worth of values are drawn per generator and launch.

    Deterministic per seed for one device type, torch version and ``prefetch``, and row i never depends on the
    other rows of the batch; but **not bit-identical** to the default ``NoiseSource`` (CPU generators): CUDA's
    Philox fills tensors in its own order, so the same seed gives other noise (and other images) than the CPU
    default; the values depend on ``prefetch`` (another cut of the stream) and may depend on the GPU model (the
    kernel's launch configuration). On ``device="cpu"`` the streams are the CPU generators' (equal to
    ``NoiseSource`` at the same prefetch)."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 prefetch: int = 20):
        super().__init__(seeds, "cpu", dtype, prefetch, 1)   # validates seeds and prefetch
        self.device = torch.device(device)
        self._gens = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def _draw(self, n: int) -> torch.Tensor:
        """(B, n) float32 on the device, one launch per generator."""
        out = torch.empty(len(self._gens), n, device=self.device)
        for g, row in zip(self._gens, out):
            torch.randn(n, generator=g, device=self.device, out=row)
        return out


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
