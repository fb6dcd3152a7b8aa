"""Separable deblurring with a Kronecker SVD (DDRM's Deblurring / Deblurring2D), and 1-D kernels."""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from .operators import SVDOperator, check_shape


def uniform_kernel(size: int) -> torch.Tensor:
    """Box kernel of ``size`` taps, each 1/size (DDRM's deblur_uni uses 9)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size: must be an odd integer ≥ 1, got {size!r}")
    return torch.full((int(size),), 1.0 / int(size), dtype=torch.float64)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """Sampled Gaussian exp(−k²/2σ²), k = −size//2 … size//2, normalised to sum 1."""
    uniform_kernel(size)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma: the Gaussian kernel width must be a positive number, got {sigma!r}")
    k = torch.arange(int(size), dtype=torch.float64) - int(size) // 2
    g = torch.exp(-k ** 2 / (2.0 * sigma ** 2))
    return g / g.sum()


def toeplitz_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """size×size matrix of a 'same' 1-D cross-correlation with zero padding: (A x)_i = Σ_a k_a x_{i+a−p}."""
    p = kernel.numel() // 2
    A = torch.zeros(size, size, dtype=torch.float64)
    for a, ka in enumerate(kernel.tolist()):
        off = a - p
        idx = torch.arange(max(0, -off), min(size, size - off))
        A[idx, idx + off] = ka
    return A


class Deblurring(SVDOperator):
    """Separable blur with zero padding, as ``torch.nn.functional.conv2d`` with the kernel outer(k_rows, k_cols)
    and padding size//2 (cross-correlation; identical to convolution for symmetric kernels), per channel.

    1-D SVDs A_rows = U_r S_r V_rᵀ, A_cols = U_c S_c V_cᵀ give H = (U_r ⊗ U_c)(S_r ⊗ S_c)(V_r ⊗ V_c)ᵀ.
    Products s_r·s_c below ``zero_below`` are set to 0 (DDRM uses 3e-2), so H is the blur with those spectral
    components removed (‖H − blur‖₂ < zero_below); ``zero_below=0`` keeps the exact blur (only values below
    1e-10·max, round-off of exact zeros, are still zeroed). y has the image's shape."""

    name = "deblurring"

    def __init__(self, shape: Sequence[int], kernel: torch.Tensor | Sequence[float],
                 kernel_cols: torch.Tensor | Sequence[float] | None = None, zero_below: float = 3e-2):
        shape = check_shape(shape)
        C, H, W = shape
        kr = self._check_kernel(kernel, "kernel")
        kc = kr if kernel_cols is None else self._check_kernel(kernel_cols, "kernel_cols")
        if not (isinstance(zero_below, (int, float)) and math.isfinite(zero_below) and zero_below >= 0):
            raise ValueError(f"zero_below: must be a number ≥ 0, got {zero_below!r}")
        self.kernel_rows, self.kernel_cols, self.zero_below = kr, kc, float(zero_below)
        self.Ur, sr, Vrh = torch.linalg.svd(toeplitz_matrix(kr, H))
        self.Uc, sc, Vch = torch.linalg.svd(toeplitz_matrix(kc, W))
        self.Vr, self.Vc = Vrh.T.contiguous(), Vch.T.contiguous()
        s = torch.outer(sr, sc)
        cut = max(self.zero_below, 1e-10 * float(s.max()))    # round-off level values count as zero too
        s = torch.where(s < cut, torch.zeros_like(s), s).expand(C, H, W).reshape(-1)
        super().__init__(shape, C * H * W, s, shape)

    @staticmethod
    def _check_kernel(k, name: str) -> torch.Tensor:
        k = torch.as_tensor(k, dtype=torch.float64)
        if k.dim() != 1 or k.numel() % 2 == 0 or not bool(torch.isfinite(k).all()) or not bool((k != 0).any()):
            raise ValueError(f"{name}: expected a 1-D kernel with an odd number of finite taps, not all zero, "
                             f"got shape {tuple(k.shape)}")
        return k

    def _sandwich(self, v: torch.Tensor, left: str, right: str) -> torch.Tensor:  # left · X · rightᵀ per channel
        X = v.reshape(-1, *self.shape)
        out = self._const(left, getattr(self, left), v) @ X @ self._const(right, getattr(self, right), v).T
        return out.reshape(v.shape[0], -1)

    def Vt(self, x):
        x = self._x(x)
        X = x.reshape(-1, *self.shape)
        Vr, Vc = self._const("Vr", self.Vr, x), self._const("Vc", self.Vc, x)
        return (Vr.T @ X @ Vc).reshape(x.shape[0], -1)

    def V(self, v):
        return self._sandwich(self._flat(v, self.n, "v"), "Vr", "Vc")

    def U(self, u):
        return self._sandwich(self._flat(u, self.m, "u"), "Ur", "Uc")

    def Ut(self, y):
        y = self.measurement_rows(y)
        Y = y.reshape(-1, *self.shape)
        Ur, Uc = self._const("Ur", self.Ur, y), self._const("Uc", self.Uc, y)
        return (Ur.T @ Y @ Uc).reshape(y.shape[0], -1)

    def degraded_view(self, y):
        return self.measurement_rows(y).reshape(-1, *self.shape)        # the blurred image itself
