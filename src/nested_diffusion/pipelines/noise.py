"""Diffusers-style randomness for the core samplers (torch only; no diffusers import).

``GeneratorNoise`` is a ``NoiseSource`` that draws exactly like ``diffusers.utils.torch_utils.randn_tensor``:
one ``torch.Generator`` draws the whole (B, ...) tensor at once; a list of B generators draws row i from
generator i; a CPU generator draws on the CPU and the result is moved to the target device. With the same
generator, the initial latents and every later noise draw (inner η, outer η, ancestral steps) therefore come
out of the same stream, in the same order, as in a stock diffusers loop.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.noise import NoiseSource

GeneratorSpec = "torch.Generator | Sequence[torch.Generator] | None"


def diffusers_randn(shape: Sequence[int], generator: "torch.Generator | Sequence[torch.Generator] | None",
                    device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Same stream as diffusers' ``randn_tensor`` (CPU generators draw on the CPU, then move)."""
    shape = tuple(int(s) for s in shape)
    gens = list(generator) if isinstance(generator, (list, tuple)) else generator
    if isinstance(gens, list) and len(gens) == 1:
        gens = gens[0]
    first = gens[0] if isinstance(gens, list) else gens
    rand_device = device
    if first is not None and first.device.type != device.type:
        if first.device.type != "cpu":
            raise ValueError(f"generator: a {first.device.type} generator cannot draw a {device.type} tensor; "
                             f"use a CPU generator or one on {device.type}")
        rand_device = torch.device("cpu")
    if isinstance(gens, list):
        rows = [torch.randn((1,) + shape[1:], generator=g, device=rand_device, dtype=dtype) for g in gens]
        return torch.cat(rows).to(device)
    return torch.randn(shape, generator=gens, device=rand_device, dtype=dtype).to(device)


class GeneratorNoise(NoiseSource):
    """A NoiseSource backed by diffusers-style generator(s) (or torch's global RNG when ``generator`` is None)."""

    def __init__(self, generator: "torch.Generator | Sequence[torch.Generator] | None", batch_size: int,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {batch_size}; "
                                 f"pass one generator, or exactly one per image")
            bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        else:
            bad = [] if generator is None or isinstance(generator, torch.Generator) else [type(generator).__name__]
        if bad:
            raise TypeError(f"generator: expected a torch.Generator, a list of them or None, got {bad[0]}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be ≥ 1, got {batch_size}")
        self.generator = list(generator) if isinstance(generator, (list, tuple)) else generator
        self._batch = int(batch_size)
        self.device, self.dtype = torch.device(device), dtype
        self.seeds = None

    @property
    def batch_size(self) -> int:
        return self._batch

    def randn(self, sample_shape: Sequence[int]) -> torch.Tensor:
        return diffusers_randn((self._batch, *sample_shape), self.generator, self.device, self.dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self._batch:
            raise ValueError(f"noise: batch of {x.shape[0]} does not match the batch size {self._batch}")
        return diffusers_randn(tuple(x.shape), self.generator, x.device, x.dtype)


def make_noise(generator, batch_size: int, device: torch.device, dtype: torch.dtype) -> NoiseSource:
    """``generator`` may also be a ready NoiseSource (e.g. per-sample seeds from the core); its batch must fit."""
    if isinstance(generator, NoiseSource):
        if generator.batch_size != batch_size:
            raise ValueError(f"generator: the NoiseSource has {generator.batch_size} streams for a batch of "
                             f"{batch_size}")
        return generator
    return GeneratorNoise(generator, batch_size, device, dtype)


def step_generator(noise: NoiseSource):
    """The torch generator(s) behind a noise source, for diffusers schedulers' ``step(generator=...)``."""
    if isinstance(noise, GeneratorNoise):
        return noise.generator
    gens = getattr(noise, "_gens", None)
    return list(gens) if gens else None
