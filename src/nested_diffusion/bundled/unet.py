"""A small class-conditional pixel-space UNet for 1×28×28 images (CPU friendly).

pixel_unshuffle(2) turns 1×28×28 into 4×14×14 exactly and invertibly, so the network is still a pixel-space
predictor (needed by DDRM). Output: the v-prediction and, DiT style, the variance-interpolation value
(IDDPM "learned_range", Nichol & Dhariwal 2021 eq. 15) as a second channel group.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .serialization import PretrainedMixin


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    """GN → SiLU → conv → GN → FiLM(embedding) → SiLU → conv, with a 1×1 skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))     # in place: the norms' outputs are fresh tensors
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h, inplace=True))


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class TinyUNet(nn.Module, PretrainedMixin):
    """Class-conditional UNet; label ``num_classes`` is the null class used for classifier-free guidance.

    ``compute_dtype`` (``set_compute_dtype``): None runs the forward in float32; ``torch.bfloat16`` runs it on a
    bfloat16 copy of the weights (activations in bfloat16 end to end: no casts per layer, which is what makes it
    pay on CPU), in whatever thread calls the model; inputs and outputs stay float32. The copy is not a submodule:
    ``state_dict``, ``save_pretrained`` and weight fingerprints see the float32 weights only; it is remade on
    ``.to()``/``.cuda()``, and a model trained after ``set_compute_dtype`` must call it again."""

    compute_dtype: torch.dtype | None = None
    _low: "TinyUNet | None" = None

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: tuple[int, int] = (48, 96),
                 num_classes: int = 10, prediction_type: str = "v", learned_variance: bool = True,
                 schedule: str = "cosine", num_train_timesteps: int = 1000, attention_heads: int = 4):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, channels=list(channels),
                           num_classes=num_classes, prediction_type=prediction_type,
                           learned_variance=learned_variance, schedule=schedule,
                           num_train_timesteps=num_train_timesteps, attention_heads=attention_heads)
        c0, c1 = channels
        emb = 4 * c0
        self.in_channels, self.num_classes = in_channels, num_classes
        self.out_groups = 2 if learned_variance else 1
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_emb = nn.Embedding(num_classes + 1, emb)
        self.stem = nn.Conv2d(4 * in_channels, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, emb)
        self.downsample = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1 = ResBlock(c0, c1, emb)
        self.mid1 = ResBlock(c1, c1, emb)
        self.attn = SelfAttention(c1, attention_heads)
        self.mid2 = ResBlock(c1, c1, emb)
        self.up1a = ResBlock(c1 + c1, c1, emb)
        self.up1b = ResBlock(c1 + c0, c1, emb)
        self.upsample = nn.Conv2d(c1, c1, 3, padding=1)
        self.up0a = ResBlock(c1 + c0, c0, emb)
        self.up0b = ResBlock(c0 + c0, c0, emb)
        self.out_norm = nn.GroupNorm(8, c0)
        self.out = nn.Conv2d(c0, 4 * in_channels * self.out_groups, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def set_compute_dtype(self, dtype: torch.dtype | None) -> "TinyUNet":
        """None or float32: plain float32; bfloat16: the forward on a bfloat16 copy of the weights. Returns the
        model."""
        if dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"dtype: the TinyUNet computes in float32 or bfloat16, got {dtype}")
        self.compute_dtype, self._low = None, None
        if dtype == torch.bfloat16:
            low = copy.deepcopy(self).to(dtype)
            self.compute_dtype = dtype
            object.__setattr__(self, "_low", low)   # not registered: no state_dict entry, no parameters
        return self

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if self.compute_dtype is not None:          # .to()/.cuda(): remake the low-precision copy from the weights
            self.set_compute_dtype(self.compute_dtype)
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, 28, 28); t: (B,) integer times; class_labels: (B,) in 0…num_classes (num_classes = null).

        Returns (B, C·g, 28, 28): the v-prediction, then (if learned_variance) the variance value in [−1, 1]-ish
        (float32 whatever the compute dtype).
        """
        if self._low is not None:
            return self._low(x.to(self.compute_dtype), t, class_labels).float()
        b = x.shape[0]
        if class_labels is None:
            class_labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
        e = self.time_mlp(timestep_embedding(t.reshape(-1).expand(b), self.config["channels"][0]).to(x.dtype))
        e = F.silu(e + self.class_emb(class_labels))
        s0 = self.stem(F.pixel_unshuffle(x, 2))
        s1 = self.down0(s0, e)
        s2 = self.downsample(s1)
        s3 = self.down1(s2, e)
        h = self.mid2(self.attn(self.mid1(s3, e)), e)
        h = self.up1a(torch.cat([h, s3], 1), e)
        h = self.up1b(torch.cat([h, s2], 1), e)
        h = self.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.up0a(torch.cat([h, s1], 1), e)
        h = self.up0b(torch.cat([h, s0], 1), e)
        out = self.out(F.silu(self.out_norm(h)))
        # pixel_shuffle maps channel block [4c, 4c+4) to output channel c: [v | variance] stay grouped
        return F.pixel_shuffle(out, 2)
