"""Feature networks, reference sets and the CLIP score for RGB images (the SD / DiT pipelines' evaluations).

* ``InceptionFeatures``: the FID Inception-v3 (2048-d pool features) from the *local* torch-fidelity weights file
  (``features.require_inception_weights``); FD on it is the usual FID. Nothing is downloaded.
* ``RandomRGBFeatures``: a seeded random-weight conv net (tests and smoke runs only; FD on it means little).
* ``reference_from_folder`` (real images → features, streamed) and ``reference_from_stats`` (a mu/sigma .npz,
  e.g. COCO-30k or ImageNet reference statistics; FD only, no KID / precision–recall).
* ``CLIPScorer``: CLIP score max(100·cos(image, prompt), 0) (Hessel et al. 2021) from a local transformers CLIP
  folder; a clear FileNotFoundError when the folder is absent.
* ``CLIPImageFeatures``: the same local CLIP folder's image embeddings as a feature network (the semantic distance
  of the pipelines' expected change), with ``zero_shot(names)`` as a classifier over class names.
Every extractor takes (N, 3, H, W) uint8 or float in [−1, 1] on any device and returns float32 CPU features.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write_bytes
from .distances import ReferenceStats, load_reference_stats
from .features import dequantize, require_inception_weights, state_fingerprint, to_inception_input
from .reference import EvalReference

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _float_rgb(x: torch.Tensor) -> torch.Tensor:
    x = dequantize(x) if x.dtype == torch.uint8 else x.float()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (N, 1|3, H, W), got shape {tuple(x.shape)}")
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


class RandomRGBFeatures(nn.Module):
    """Seeded random conv features of RGB images at any size (tests and smoke runs; not a perceptual network)."""

    def __init__(self, num_features: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16 * 4 * 4, num_features)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
        self.num_features = int(num_features)
        self.extractor_id = f"random-rgb-{num_features}d-{state_fingerprint(self)}"
        self.description = f"random-weight RGB conv features ({num_features}-d, seed {seed}; smoke tests only)"
        self.eval()

    def train(self, mode: bool = True) -> "RandomRGBFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _float_rgb(x).to(self.conv1.weight.device)
        h = F.adaptive_avg_pool2d(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))), 4)
        return self.head(h.flatten(1)).float().cpu()


class InceptionFeatures(nn.Module):
    """FID Inception-v3 pool features (2048-d) from the local weights file, via torchmetrics (which resizes the
    uint8 images to 299×299 as in the reference TF implementation)."""

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        path = require_inception_weights()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as e:
            raise ImportError(f"Inception features need torchmetrics with torch-fidelity ({e}); install "
                              f"'nested-diffusion[eval]' and torch-fidelity") from e
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path)).to(device)
        self.num_features = 2048
        self.extractor_id = "inception-v3-fid-2048"
        self.description = "FID Inception-v3 (torch-fidelity weights), 2048-d pool features"

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = to_inception_input(x).to(next(self.net.parameters()).device)
        return self.net(u).reshape(u.shape[0], -1).float().cpu()


def feature_network(name: str, device: str | torch.device = "cpu", num_features: int = 16) -> nn.Module:
    """'inception' (local weights), 'random-rgb' (smoke tests) or a local CLIP folder (``CLIPImageFeatures``)."""
    if name == "inception":
        return InceptionFeatures(device)
    if name == "random-rgb":
        return RandomRGBFeatures(num_features).to(device)
    if Path(name).is_dir():
        return CLIPImageFeatures(name, device)
    raise ValueError(f"features: {name!r} is not valid; use 'inception', 'random-rgb' or a local CLIP folder")


# ------------------------------------------------------------------------------------------------ references
def image_files(folder: str | os.PathLike, limit: int | None = None, skip: int = 0) -> list[Path]:
    """Image files of ``folder`` (sorted by name), files skip..skip+limit."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"reference images: no folder at {str(d)!r}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    files = files[skip:] if limit is None else files[skip:skip + limit]
    if not files:
        raise ValueError(f"reference images: no {'/'.join(IMAGE_SUFFIXES)} files in {str(d)!r} after skipping "
                         f"{skip}")
    return files


def _read_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """RGB, centre-cropped to the target aspect ratio, resized (bicubic) to ``size`` = (H, W); uint8 (3, H, W)."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        h, w = size
        scale = max(h / im.height, w / im.width)
        im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - w) // 2, (im.height - h) // 2
        arr = np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@torch.no_grad()
def _folder_features(extractor: nn.Module, files: Sequence[Path], size: tuple[int, int], batch: int) -> torch.Tensor:
    out = []
    for i in range(0, len(files), batch):
        out.append(extractor(torch.stack([_read_image(p, size) for p in files[i:i + batch]])).float())
    return torch.cat(out)


def reference_from_folder(extractor: nn.Module, folder: str | os.PathLike, size: tuple[int, int],
                          limit: int | None = None, heldout: int = 0, batch: int = 64,
                          cache_dir: str | os.PathLike | None = None) -> EvalReference:
    """Reference features of the first ``limit`` images of ``folder`` (sorted names), read ``batch`` at a time at
    the generated size (H, W); the next ``heldout`` files form the FD noise-floor pool (0: none). With
    ``cache_dir`` the features are stored there (keyed by network, file list, size) and reused."""
    ext_id = getattr(extractor, "extractor_id", type(extractor).__name__)
    files = image_files(folder, limit)
    hfiles = image_files(folder, heldout, skip=len(files)) if heldout else []
    if len(hfiles) < heldout:
        raise ValueError(f"heldout: {heldout} images requested, only {len(hfiles)} left in {str(folder)!r}")
    desc = (f"{len(files)} images of {folder} at {size[0]}×{size[1]}"
            + (f"; noise-floor pool: the next {heldout}" if heldout else ""))
    key = hashlib.sha256(json.dumps([ext_id, list(size), [p.name for p in files], [p.name for p in hfiles],
                                     str(Path(folder).resolve())]).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"reference-{ext_id}-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            f = torch.from_numpy(z["features"])
            h = torch.from_numpy(z["heldout"]) if heldout else None
    else:
        f = _folder_features(extractor, files, size, batch)
        h = _folder_features(extractor, hfiles, size, batch) if heldout else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, features=f.numpy(), heldout=(h if h is not None else torch.zeros(0)).numpy())
            atomic_write_bytes(path, buf.getvalue())
    return EvalReference(extractor, ReferenceStats.from_features(f, ext_id), f, h, desc)


class StatsReference(EvalReference):
    """A reference known only by its Gaussian statistics (FD only: runners skip KID and precision/recall)."""

    def info(self) -> dict:
        return dict(description=self.description, n=self.stats.n, heldout_n=None,
                    extractor_id=self.stats.extractor_id)


def reference_from_stats(extractor: nn.Module, path: str | os.PathLike) -> StatsReference:
    """Reference mu/sigma from an .npz (ours, pytorch-fid, clean-fid, ADM); its dimension must match."""
    ext_id = getattr(extractor, "extractor_id", type(extractor).__name__)
    stats = load_reference_stats(path, ext_id)
    if stats.mu.size != extractor.num_features:
        raise ValueError(f"reference stats {str(path)!r}: {stats.mu.size}-d, but the feature network "
                         f"{ext_id} gives {extractor.num_features}-d features")
    stats.extractor_id = stats.extractor_id or ext_id
    return StatsReference(extractor, stats, None, None, f"statistics from {path}")


# ---------------------------------------------------------------------------------------------------- CLIP score
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _projected(out) -> torch.Tensor:
    """get_*_features returns the projected embedding (transformers 4) or an output whose pooler_output is (5)."""
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


class CLIPScorer:
    """CLIP score max(100·cos(image, prompt), 0) per image, from a local transformers CLIP folder (config.json,
    weights, tokenizer files). Images: shorter side resized (bicubic, antialiased) to the model's input size,
    centre crop, CLIP normalisation; prompts truncated to the tokenizer's maximum length."""

    name = "clip_score"

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu", batch: int = 64):
        d = Path(model_dir)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"clip_score: no CLIP model at {str(d)!r} (config.json missing); pass a local "
                                    f"transformers CLIP folder, e.g. openai/clip-vit-large-patch14 saved with "
                                    f"save_pretrained (nothing is downloaded)")
        try:
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError as e:
            raise ImportError(f"clip_score needs transformers ({e}): pip install transformers") from e
        self.model = CLIPModel.from_pretrained(d, local_files_only=True).eval().to(device)
        self.tokenizer = CLIPTokenizer.from_pretrained(d, local_files_only=True)
        self.size = int(self.model.config.vision_config.image_size)
        self.device, self.batch = torch.device(device), int(batch)
        self.description = f"CLIP score (100·cos, clamped at 0) with {d.name}"

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = (_float_rgb(x) + 1) / 2
        h, w = x.shape[-2:]
        s = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * s)), max(self.size, round(w * s))), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        mean = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)
        return (x - mean) / torch.tensor(_CLIP_STD).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP score per image: max(100·cos, 0)."""
        return (100 * self.cosine(images, prompts)).clamp(min=0)

    @torch.no_grad()
    def cosine(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """cos(image embedding, prompt embedding) per image, unclamped."""
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"prompts: {len(prompts)} prompts for {images.shape[0]} images")
        out = []
        for i in range(0, len(prompts), self.batch):
            pix = self.preprocess(images[i:i + self.batch]).to(self.device, self.model.dtype)
            tok = self.tokenizer(prompts[i:i + self.batch], padding=True, truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").to(self.device)
            img = F.normalize(_projected(self.model.get_image_features(pixel_values=pix)), dim=1)
            txt = F.normalize(_projected(self.model.get_text_features(**tok)), dim=1)
            out.append((img * txt).sum(1).cpu())
        return torch.cat(out)


class CLIPImageFeatures(nn.Module):
    """CLIP image embeddings (projected, L2-normalised; ``num_features`` = the projection size) of a local
    transformers CLIP folder, as a feature network with ``extractor_id`` (folder name + weights fingerprint).
    ``zero_shot(names)`` gives a classifier: images → logits 100·cos(image, "a photo of a {name}")."""

    def __init__(self, model_dir: str | os.PathLike, device: str | torch.device = "cpu", batch: int = 64):
        super().__init__()
        self.scorer = CLIPScorer(model_dir, device, batch)
        self.num_features = int(self.scorer.model.config.projection_dim)
        self.extractor_id = f"clip-image-{Path(model_dir).name}-{state_fingerprint(self.scorer.model)}"
        self.description = f"CLIP image embeddings ({self.num_features}-d) of {Path(model_dir).name}"

    def train(self, mode: bool = True) -> "CLIPImageFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, out = self.scorer, []
        for i in range(0, x.shape[0], s.batch):
            pix = s.preprocess(x[i:i + s.batch]).to(s.device, s.model.dtype)
            out.append(F.normalize(_projected(s.model.get_image_features(pixel_values=pix)), dim=1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def zero_shot(self, names: Sequence[str]):
        """A classifier over ``names``: images → (N, len(names)) logits, 100·cos with "a photo of a {name}"."""
        s = self.scorer
        tok = s.tokenizer([f"a photo of a {n}" for n in names], padding=True, truncation=True,
                          max_length=s.tokenizer.model_max_length, return_tensors="pt").to(s.device)
        text = F.normalize(_projected(s.model.get_text_features(**tok)), dim=1).cpu()
        return lambda images: 100 * self(images) @ text.T
