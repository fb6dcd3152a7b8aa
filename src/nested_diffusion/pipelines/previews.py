"""Cheap decoders for anytime previews: a tiny autoencoder (diffusers ``AutoencoderTiny``, i.e. TAESD weights the
user has locally) or a linear latent → RGB map. Final images always go through the pipeline's full VAE.

Which updates get the cheap decoder (``use_cheap``): x̂0 previews (source "x0_preview", i.e. the first inner run,
and later runs' previews with ``previews="all"``), and also intermediate inner results when
``preview_results=True``. The final result never does.

``latent_rgb``: images ≈ A·z + b per latent pixel, upsampled bilinearly to the output size. The factors are fitted
by least squares, once per pipeline (cached in ``pipe.latent_rgb_factors``), on the pipeline's own VAE: a fixed set
of 16 smooth random colour images (seed 0, 64×64 at a VAE factor of 8) is encoded (posterior mean, then the
pipeline's scaling/shift so z is what the denoiser sees) and the colours, average-pooled to the latent grid, are
regressed on z. It is an approximation: a linear map cannot reproduce texture, only the colour layout. Set
``pipe.latent_rgb_factors`` to a (C + 1, 3) tensor (rows: channels, then the bias) to use published factors.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..core.events import INNER_RESULT, X0_PREVIEW

PREVIEW_DECODERS = ("vae", "tiny", "latent_rgb")


def check_preview(preview: Any, preview_vae: Any) -> str:
    """The preview decoder name: "vae" (default: the full VAE everywhere), "tiny" or "latent_rgb"."""
    if preview is None:
        preview = "tiny" if preview_vae is not None else "vae"
    if preview not in PREVIEW_DECODERS:
        raise ValueError(f"preview: {preview!r} is not valid; use one of {PREVIEW_DECODERS} (or None)")
    if preview == "tiny":
        if preview_vae is None:
            raise ValueError("preview_vae: preview='tiny' needs an AutoencoderTiny as preview_vae")
        if not hasattr(preview_vae, "decode") or not hasattr(preview_vae, "config"):
            raise TypeError(f"preview_vae: expected a diffusers AutoencoderTiny, got {type(preview_vae).__name__}")
    elif preview_vae is not None:
        raise ValueError(f"preview_vae: given, but preview={preview!r} does not use it; use preview='tiny'")
    return preview


def use_cheap(update: Any, preview: str, preview_results: bool) -> bool:
    if preview == "vae" or update.final:
        return False
    return update.source == X0_PREVIEW or (preview_results and update.source == INNER_RESULT)


def tiny_decode(tiny: Any, z: torch.Tensor) -> torch.Tensor:
    """TAESD decodes the latents the denoiser sees (its config: scaling 1, shift 0); image in [−1, 1]."""
    scale = getattr(tiny.config, "scaling_factor", 1.0) or 1.0
    shift = getattr(tiny.config, "shift_factor", 0.0) or 0.0
    param = next(tiny.parameters())
    return tiny.decode((z / scale + shift).to(param.device, param.dtype), return_dict=False)[0]


def synthetic_images(n: int = 16, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields in [−1, 1]: 4×4 random colours upsampled bilinearly (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def fit_latent_rgb(encode: Callable[[torch.Tensor], torch.Tensor], factor: int, images: torch.Tensor) -> torch.Tensor:
    """Least-squares (C + 1, 3) factors from images (B, 3, H, W) in [−1, 1] and ``encode`` → model latents."""
    z = encode(images).float().cpu()
    rgb = F.avg_pool2d(images.float(), factor)
    if rgb.shape[-2:] != z.shape[-2:]:
        raise ValueError(f"latent_rgb: latents {tuple(z.shape[-2:])} do not match images pooled by {factor}")
    zs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    design = torch.cat([zs, torch.ones(zs.shape[0], 1)], dim=1).double()
    target = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()
    factors = torch.linalg.lstsq(design, target).solution.float()
    if not bool(torch.isfinite(factors).all()):
        raise FloatingPointError("latent_rgb: the fitted factors are not finite (the VAE encoded NaN/inf); set "
                                 "pipe.latent_rgb_factors yourself or use preview_vae")
    return factors


def latent_rgb_decode(factors: torch.Tensor, z: torch.Tensor, factor: int) -> torch.Tensor:
    """Apply (C + 1, 3) factors to (B, C, h, w) latents; bilinear upsampling by the VAE factor; [−1, 1]."""
    if factors.shape != (z.shape[1] + 1, 3):
        raise ValueError(f"latent_rgb_factors: expected shape ({z.shape[1] + 1}, 3) for {z.shape[1]}-channel "
                         f"latents, got {tuple(factors.shape)}")
    f = factors.to(z.device, torch.float32)
    rgb = torch.einsum("bchw,cd->bdhw", z.float(), f[:-1]) + f[-1].view(1, 3, 1, 1)
    return F.interpolate(rgb, scale_factor=factor, mode="bilinear", align_corners=False).clamp(-1, 1)


def kl_encoder(vae: Any, scaling: float, shift: float | None,
               device: torch.device | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """images → the denoiser's latents: (posterior mean − shift) · scaling (SD/SDXL: shift None). A float16 VAE
    that asks for upcasting (``force_upcast``, SDXL's) encodes in float32, as diffusers decodes."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        param = next(vae.parameters())
        upcast = param.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            with torch.no_grad():
                mean = vae.encode(images.to(device or param.device, next(vae.parameters()).dtype)).latent_dist.mean
        finally:
            if upcast:
                vae.to(torch.float16)
        return (mean.float() - (shift or 0.0)) * scaling
    return encode


class PreviewDecoder:
    """Decodes one update's x̂0 latent (B, C, h, w; model space) with the chosen decoder, or says to use the VAE."""

    def __init__(self, pipe: Any, preview: str, preview_vae: Any, preview_results: bool,
                 encode: Callable[[torch.Tensor], torch.Tensor], factor: int):
        self.pipe, self.preview, self.tiny, self.results = pipe, preview, preview_vae, preview_results
        self.encode, self.factor = encode, factor

    def wants(self, update: Any) -> bool:
        return use_cheap(update, self.preview, self.results)

    def factors(self) -> torch.Tensor:
        f = getattr(self.pipe, "latent_rgb_factors", None)
        if f is None:
            f = fit_latent_rgb(self.encode, self.factor, synthetic_images(size=8 * self.factor))
            self.pipe.latent_rgb_factors = f
        return f

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.preview == "tiny":
            return tiny_decode(self.tiny, z)
        return latent_rgb_decode(self.factors(), z, self.factor)
