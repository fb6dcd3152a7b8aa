"""Operators by name (the CLI's --degradation and the Table 2 tasks)."""
from __future__ import annotations

from typing import Sequence

from .blur import Deblurring, gaussian_kernel, uniform_kernel
from .operators import Colorization, Denoising, Inpainting, SuperResolution, SVDOperator, check_shape


DEGRADATIONS = ("denoise", "inpaint", "inpaint_box", "sr", "colorize", "deblur_uniform", "deblur_gauss")


def make_operator(name: str, shape: Sequence[int], *, ratio: float = 0.5, mask_seed: int = 0,
                  box: Sequence[int] | None = None, factor: int = 4, kernel_size: int = 9,
                  kernel_sigma: float = 10.0, zero_below: float = 3e-2) -> SVDOperator:
    """An operator by name (the CLI's --degradation): denoise, inpaint (random pixels, ``ratio`` missing,
    ``mask_seed``), inpaint_box (``box`` = top, left, height, width), sr (block averaging by ``factor``),
    colorize, deblur_uniform (``kernel_size`` taps), deblur_gauss (``kernel_size`` taps, ``kernel_sigma``)."""
    if name == "denoise":
        return Denoising(shape)
    if name == "inpaint":
        return Inpainting.random(shape, ratio, mask_seed)
    if name == "inpaint_box":
        shape = check_shape(shape)
        if box is None:  # the centred half-size square
            h, w = shape[1] // 2, shape[2] // 2
            box = ((shape[1] - h) // 2, (shape[2] - w) // 2, h, w)
        if len(box) != 4:
            raise ValueError(f"box: expected top, left, height, width, got {tuple(box)}")
        return Inpainting.box(shape, *[int(b) for b in box])
    if name == "sr":
        return SuperResolution(shape, factor)
    if name == "colorize":
        return Colorization(shape)
    if name == "deblur_uniform":
        return Deblurring(shape, uniform_kernel(kernel_size), zero_below=zero_below)
    if name == "deblur_gauss":
        return Deblurring(shape, gaussian_kernel(kernel_size, kernel_sigma), zero_below=zero_below)
    raise ValueError(f"degradation: unknown name {name!r}; valid: {', '.join(DEGRADATIONS)}")
