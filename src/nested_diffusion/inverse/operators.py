"""Linear degradations y = H x with a cheap SVD H = U Σ Vᵀ, applied without dense matrices (DDRM, Kawar et al. 2022).

Every operator acts on images of one shape (C, H, W). Image-space vectors are the row-major flattening of
(C, H, W) ("pixel layout", index c·H·W + i·W + j); methods accept (B, C, H, W) or (B, n) and return flat tensors.
Spectral vectors (coordinates in the V basis) have length n = C·H·W; the first m of them are the ones the
measurement sees, with singular values ``singulars()`` (length m, zeros allowed). ``add_zeros`` pads an
(B, m) spectral vector to (B, n). The method names follow DDRM's ``H_functions``:

    H(x)      = U (s ⊙ Vᵀx[:m])
    Ht(y)     = V add_zeros(s ⊙ Uᵀy)
    H_pinv(y) = V add_zeros(Uᵀy / s), with 1/s read as 0 where s = 0 (guarded pseudo-inverse)

Units: operators are linear, so they work in any pixel range; the samplers use [−1, 1].
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

Shape = tuple[int, int, int]


def check_shape(shape: Sequence[int]) -> Shape:
    try:
        s = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape: expected (channels, height, width) integers, got {shape!r}") from None
    if len(s) != 3 or any(v < 1 for v in s):
        raise ValueError(f"shape: expected (channels, height, width) with positive sizes, got {tuple(shape)}")
    return s  # type: ignore[return-value]


def householder_basis(u: torch.Tensor) -> torch.Tensor:
    """A symmetric orthogonal k×k matrix whose first column is the unit vector u (Householder reflection e1 ↔ u)."""
    u = u.to(torch.float64) / u.to(torch.float64).norm()
    k = u.numel()
    e1 = torch.zeros(k, dtype=torch.float64)
    e1[0] = 1.0
    w = e1 - u
    if float(w.norm()) < 1e-12:
        return torch.eye(k, dtype=torch.float64)
    w = w / w.norm()
    return torch.eye(k, dtype=torch.float64) - 2.0 * torch.outer(w, w)


class SVDOperator:
    """Base class. Subclasses set ``shape``, ``m`` and ``_s`` (float64, length m) and implement V/Vt/U/Ut."""

    name = "operator"

    def __init__(self, shape: Sequence[int], m: int, singulars: torch.Tensor, measurement_shape: Sequence[int]):
        self.shape = check_shape(shape)
        self.n = math.prod(self.shape)
        self.m = int(m)
        self._s = singulars.to(torch.float64).reshape(-1)
        self.measurement_shape = tuple(int(v) for v in measurement_shape)
        self._cache: dict = {}
        assert self._s.numel() == self.m and math.prod(self.measurement_shape) == self.m

    # ----------------------------------------------------------------- helpers
    def _const(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A float64 constant converted once per (dtype, device)."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = t.to(dtype=like.dtype, device=like.device)
        return self._cache[key]

    def _flat(self, v: torch.Tensor, size: int, what: str, shape: tuple | None = None) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what}: expected a torch.Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"{what}: expected a floating-point tensor, got {v.dtype}")
        ok = v.dim() >= 2 and math.prod(v.shape[1:]) == size and (v.dim() == 2 or shape is None
                                                                   or tuple(v.shape[1:]) == shape)
        if not ok:
            want = f"(B, {size})" + (f" or (B, {', '.join(map(str, shape))})" if shape else "")
            raise ValueError(f"{what}: {self.name} on images of shape {self.shape} expects {want}, "
                             f"got {tuple(v.shape)}")
        return v.reshape(v.shape[0], size)

    def _x(self, x: torch.Tensor, what: str = "x") -> torch.Tensor:
        return self._flat(x, self.n, what, self.shape)

    def measurement_rows(self, y: torch.Tensor, what: str = "y") -> torch.Tensor:
        """y as (B, m) rows, checked against the measurement shape."""
        return self._flat(y, self.m, what, self.measurement_shape)

    # ----------------------------------------------------------------- the SVD (subclasses)
    def V(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def Vt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def U(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def Ut(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def singulars(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The m singular values (float64, or the dtype/device of ``like``)."""
        return self._s.clone() if like is None else self._const("s", self._s, like)

    def add_zeros(self, v: torch.Tensor) -> torch.Tensor:
        v = self._flat(v, self.m, "v")
        return torch.cat([v, v.new_zeros(v.shape[0], self.n - self.m)], dim=1)

    # ----------------------------------------------------------------- derived
    def H(self, x: torch.Tensor) -> torch.Tensor:
        x = self._x(x)
        return self.U(self.singulars(x) * self.Vt(x)[:, :self.m])

    def Ht(self, y: torch.Tensor) -> torch.Tensor:
        y = self.measurement_rows(y)
        return self.V(self.add_zeros(self.singulars(y) * self.Ut(y)))

    def inverse_singulars(self, like: torch.Tensor) -> torch.Tensor:
        s = self.singulars(like)
        return torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))

    def H_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Moore–Penrose pseudo-inverse: components with s = 0 get 0 (no inf/NaN)."""
        y = self.measurement_rows(y)
        return self.V(self.add_zeros(self.Ut(y) * self.inverse_singulars(y)))

    def degraded_view(self, y: torch.Tensor) -> torch.Tensor:
        """The measurement as a (B, C, H, W) picture (pseudo-inverse: nearest-upsampled, gray or zero-filled)."""
        return self.H_pinv(y).reshape(-1, *self.shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, m={self.m})"


class Denoising(SVDOperator):
    """H = I (m = n, all singular values 1): y = x + σ_y n."""

    name = "denoising"

    def __init__(self, shape: Sequence[int]):
        shape = check_shape(shape)
        n = math.prod(shape)
        super().__init__(shape, n, torch.ones(n, dtype=torch.float64), shape)

    def V(self, v):
        return self._flat(v, self.n, "v").clone()

    def Vt(self, x):
        return self._x(x).clone()

    def U(self, u):
        return self._flat(u, self.m, "u").clone()

    def Ut(self, y):
        return self.measurement_rows(y).clone()


class Inpainting(SVDOperator):
    """Keep the pixels where ``keep`` is True (an (H, W) mask shared by all channels, or a (C, H, W) mask).

    V is a permutation (kept entries first, then missing), U = I, s = 1 on the m kept entries; y is the compact
    vector of kept values in pixel order."""

    name = "inpainting"

    def __init__(self, shape: Sequence[int], keep: torch.Tensor):
        shape = check_shape(shape)
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool:
            raise TypeError(f"keep: expected a boolean mask, got {keep.dtype}")
        if tuple(keep.shape) == shape[1:]:
            keep = keep.unsqueeze(0).expand(shape)
        if tuple(keep.shape) != shape:
            raise ValueError(f"keep: expected a mask of shape {shape[1:]} or {shape}, got {tuple(keep.shape)}")
        flat = keep.reshape(-1)
        self.kept = torch.nonzero(flat).reshape(-1)
        self.missing = torch.nonzero(~flat).reshape(-1)
        self.perm = torch.cat([self.kept, self.missing])           # spectral index → pixel index
        self.inv_perm = torch.argsort(self.perm)                    # pixel index → spectral index
        self.keep = keep.clone()
        m = self.kept.numel()
        super().__init__(shape, m, torch.ones(m, dtype=torch.float64), (m,))

    @classmethod
    def random(cls, shape: Sequence[int], missing_ratio: float = 0.5, seed: int = 0) -> "Inpainting":
        """round(ratio·H·W) pixels missing, chosen by torch.randperm with ``seed``; same pixels in every channel."""
        shape = check_shape(shape)
        if not (isinstance(missing_ratio, (int, float)) and 0.0 <= missing_ratio <= 1.0):
            raise ValueError(f"missing_ratio: must be a number in [0, 1], got {missing_ratio!r}")
        hw = shape[1] * shape[2]
        order = torch.randperm(hw, generator=torch.Generator().manual_seed(int(seed)))
        keep = torch.ones(hw, dtype=torch.bool)
        keep[order[:round(missing_ratio * hw)]] = False
        return cls(shape, keep.reshape(shape[1:]))

    @classmethod
    def box(cls, shape: Sequence[int], top: int, left: int, height: int, width: int) -> "Inpainting":
        """A missing rectangle of rows [top, top+height) and columns [left, left+width)."""
        shape = check_shape(shape)
        _, H, W = shape
        if not (0 <= top < H and 0 <= left < W and height >= 1 and width >= 1
                and top + height <= H and left + width <= W):
            raise ValueError(f"box: (top={top}, left={left}, height={height}, width={width}) does not fit in an "
                             f"{H}×{W} image; need 0 ≤ top, top+height ≤ {H}, 0 ≤ left, left+width ≤ {W}")
        keep = torch.ones(H, W, dtype=torch.bool)
        keep[top:top + height, left:left + width] = False
        return cls(shape, keep)

    def Vt(self, x):
        return self._x(x)[:, self.perm.to(x.device)]

    def V(self, v):
        return self._flat(v, self.n, "v")[:, self.inv_perm.to(v.device)]

    def U(self, u):
        return self._flat(u, self.m, "u").clone()

    def Ut(self, y):
        return self.measurement_rows(y).clone()


class _BlockOperator(SVDOperator):
    """Shared code: each group of k entries is transformed by a k×k orthogonal P whose first column is the
    measured direction; spectral vector = [first coefficient of every group, then the remaining ones]."""

    def _to_groups(self, x: torch.Tensor) -> torch.Tensor:   # (B, n) → (B, G, k)
        raise NotImplementedError

    def _from_groups(self, g: torch.Tensor) -> torch.Tensor:  # (B, G, k) → (B, n)
        raise NotImplementedError

    def Vt(self, x):
        c = self._to_groups(self._x(x)) @ self._const("P", self.P, x)   # g @ P = Pᵀ g: coefficients
        return torch.cat([c[..., 0], c[..., 1:].reshape(c.shape[0], -1)], dim=1)

    def V(self, v):
        v = self._flat(v, self.n, "v")
        G, k = self.m, self.P.shape[0]
        c = torch.cat([v[:, :G, None], v[:, G:].reshape(v.shape[0], G, k - 1)], dim=2)
        return self._from_groups(c @ self._const("P", self.P, v))      # c @ P = P c as P is symmetric

    def U(self, u):
        return self._flat(u, self.m, "u").clone()

    def Ut(self, y):
        return self.measurement_rows(y).clone()


class SuperResolution(_BlockOperator):
    """Block averaging by ``factor`` r: y = mean over each r×r patch, shape (C, H/r, W/r); s = 1/r, U = I."""

    name = "super-resolution"

    def __init__(self, shape: Sequence[int], factor: int):
        shape = check_shape(shape)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
            raise ValueError(f"factor: must be an integer ≥ 1, got {factor!r}")
        C, H, W = shape
        if H % factor or W % factor:
            raise ValueError(f"factor: {factor} must divide the image size {H}×{W} (block averaging)")
        self.r = factor = int(factor)
        self.P = householder_basis(torch.ones(factor * factor, dtype=torch.float64))
        low = (C, H // factor, W // factor)
        m = math.prod(low)
        super().__init__(shape, m, torch.full((m,), 1.0 / factor, dtype=torch.float64), low)

    def _to_groups(self, x):
        C, H, W = self.shape
        r = self.r
        g = x.reshape(-1, C, H // r, r, W // r, r).permute(0, 1, 2, 4, 3, 5)
        return g.reshape(x.shape[0], self.m, r * r)

    def _from_groups(self, g):
        C, H, W = self.shape
        r = self.r
        x = g.reshape(-1, C, H // r, W // r, r, r).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(g.shape[0], self.n)

    def degraded_view(self, y):
        return self.H_pinv(y).reshape(-1, *self.shape)   # = nearest-neighbour upsampling of the low-res image


class Colorization(_BlockOperator):
    """Per pixel y = Σ_c w_c x_c (default w = 1/C: the channel mean, DDRM's ≈[1/3, 1/3, 1/3]); y has shape
    (1, H, W). One singular value ‖w‖ per pixel (1/√3 ≈ 0.577 for RGB), U = I."""

    name = "colorization"

    def __init__(self, shape: Sequence[int], weights: Sequence[float] | None = None):
        shape = check_shape(shape)
        C, H, W = shape
        if C < 2:
            raise ValueError(f"shape: colorization needs a colour image (≥ 2 channels, e.g. RGB), got {C} channel")
        w = torch.full((C,), 1.0 / C, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.numel() != C or not bool(torch.isfinite(w).all()) or float(w.norm()) == 0.0:
            raise ValueError(f"weights: need {C} finite channel weights, not all zero, got {weights!r}")
        self.weights = w
        self.P = householder_basis(w)
        super().__init__(shape, H * W, torch.full((H * W,), float(w.norm()), dtype=torch.float64), (1, H, W))

    def _to_groups(self, x):
        C, H, W = self.shape
        return x.reshape(-1, C, H * W).transpose(1, 2)

    def _from_groups(self, g):
        return g.transpose(1, 2).reshape(g.shape[0], self.n)

    def degraded_view(self, y):
        return self.H_pinv(y).reshape(-1, *self.shape)   # gray replicated over the channels (up to w)


MEASUREMENT_SEED_OFFSET = 1_000_003   # measurement noise seeds are offset so they never equal sampling seeds


def measure(operator: SVDOperator, x: torch.Tensor, sigma_y: float, seed: int | None = 0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """y = H x + σ_y·n, n ~ N(0, I) from ``generator`` (or a fresh one seeded with ``seed``), shape (B, m).

    σ_y is in the units of x (for images in [−1, 1]: σ in [0, 1] pixel units is σ_y / 2)."""
    check_sigma_y(sigma_y)
    y = operator.H(x)
    if sigma_y > 0:
        g = generator if generator is not None else torch.Generator().manual_seed(int(seed or 0))
        y = y + sigma_y * torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device)
    return y


def check_sigma_y(sigma_y: float) -> float:
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not math.isfinite(sigma_y) \
            or sigma_y < 0:
        raise ValueError(f"sigma_y: the measurement noise std must be a finite number ≥ 0 (in the model's [−1, 1] "
                         f"units), got {sigma_y!r}")
    return float(sigma_y)
