"""Consistency of anytime intermediates with the final image (seed supplementary §B, Fig. 11).

A metric maps two image batches (N, C, H, W) — uint8 or float in [−1, 1] — to N per-sample values. Built in
(no downloads): ``mse`` (pixels on a [0, 1] scale) and ``feature_cosine`` (1 − cosine of classifier features:
a semantic distance). Optional, only from local weights (a clear error otherwise, never a silent zero):
``lpips`` (torchmetrics + torchvision), ``clip_image`` (open_clip; 100·cos, the CLIP-score convention),
``dreamsim`` and ``clip_score`` (image–prompt, transformers). Plug in anything with ``name``, ``kind`` and
``__call__(x, ref) -> (N,)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from .features import dequantize

KINDS = ("distance", "similarity", "score")  # score: reference-free (e.g. image–prompt CLIP score)


@runtime_checkable
class ConsistencyMetric(Protocol):
    name: str
    kind: str

    def __call__(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor: ...


def _float(x: torch.Tensor) -> torch.Tensor:
    return dequantize(x) if x.dtype == torch.uint8 else x.float()


def _rgb01(x: torch.Tensor, size: int | None = None) -> torch.Tensor:
    x = (_float(x) + 1) / 2
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1) if size else x


class MSEDistance:
    name, kind = "mse", "distance"

    def __call__(self, x, ref):
        a, b = (_float(x) + 1) / 2, (_float(ref) + 1) / 2     # [0, 1] scale
        return (a - b).pow(2).flatten(1).mean(1)


class FeatureCosineDistance:
    """1 − cos(f(x), f(ref)) on a feature network (default: the project classifier's penultimate layer)."""

    kind = "distance"

    def __init__(self, extractor, name: str = "feature_cosine"):
        self.extractor, self.name = extractor, name

    @torch.no_grad()
    def __call__(self, x, ref):
        return (1 - F.cosine_similarity(self.extractor(_float(x)), self.extractor(_float(ref)), dim=1)).cpu()


def _require_file(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what}: weights not found at {path}; {hint} (nothing is downloaded)")
    return path


def _require_import(module: str, extra: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this metric ({e}); install {extra}") from e


LPIPS_BACKBONES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                   "squeeze": "squeezenet1_1-b8a52dc0.pth"}


class LPIPSDistance:
    """LPIPS (Zhang et al. 2018) via torchmetrics; the backbone must already be in $TORCH_HOME/hub/checkpoints."""

    name, kind = "lpips", "distance"

    def __init__(self, net: str = "alex"):
        if net not in LPIPS_BACKBONES:
            raise ValueError(f"net: {net!r} is not valid; use one of {sorted(LPIPS_BACKBONES)}")
        _require_file(Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONES[net], f"lpips ({net})",
                      "place the torchvision backbone file there or set TORCH_HOME")
        _require_import("torchvision", "torchvision matching your torch build")
        lp = _require_import("torchmetrics.image.lpip", "torchmetrics")
        self.metric = lp.LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="mean", normalize=False)
        self.name = f"lpips_{net}"

    @torch.no_grad()
    def __call__(self, x, ref):
        a, b = _rgb01(x) * 2 - 1, _rgb01(ref) * 2 - 1
        return torch.stack([self._one(a[i:i + 1], b[i:i + 1]) for i in range(a.shape[0])])  # per sample

    def _one(self, a, b):
        self.metric.reset()
        self.metric.update(a, b)
        return self.metric.compute().float()


_CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])[None, :, None, None]
_CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])[None, :, None, None]


class CLIPImageSimilarity:
    """Image-to-image CLIP score max(100·cos, 0) with open_clip from a local checkpoint file."""

    name, kind = "clip_image", "similarity"

    def __init__(self, weights: str | os.PathLike, arch: str = "ViT-B-32"):
        _require_file(Path(weights), "clip_image", "pass a local open_clip checkpoint (open_clip_pytorch_model.bin)")
        oc = _require_import("open_clip", "open-clip-torch (with torchvision, timm)")
        self.model = oc.create_model(arch, pretrained=str(weights)).eval()
        self.size = int(self.model.visual.image_size[0] if isinstance(self.model.visual.image_size, tuple)
                        else self.model.visual.image_size)

    @torch.no_grad()
    def embed(self, x):
        return F.normalize(self.model.encode_image((_rgb01(x, self.size) - _CLIP_MEAN) / _CLIP_STD), dim=1)

    def __call__(self, x, ref):
        return (100 * (self.embed(x) * self.embed(ref)).sum(1)).clamp(min=0)


class DreamSimDistance:
    """DreamSim (Fu et al. 2023) from a pre-filled ``cache_dir``; torch.hub's directory is restored afterwards."""

    name, kind = "dreamsim", "distance"

    def __init__(self, cache_dir: str | os.PathLike):
        cache = _require_file(Path(cache_dir), "dreamsim", "pre-place the DreamSim ensemble files in this folder")
        _require_file(cache / "facebookresearch_dino_main", "dreamsim", "it also needs the cached hub repo")
        ds = _require_import("dreamsim", "dreamsim (with torchvision, timm, peft, transformers, open_clip)")
        hub_dir = torch.hub.get_dir()
        try:
            self.model, _ = ds.dreamsim(pretrained=True, cache_dir=str(cache))
        finally:
            torch.hub.set_dir(hub_dir)  # dreamsim sets it process-wide

    @torch.no_grad()
    def __call__(self, x, ref):
        return self.model(_rgb01(x, 224), _rgb01(ref, 224)).reshape(-1).float()


class CLIPPromptScore:
    """Reference-free CLIP score max(100·cos(image, prompt), 0) (Hessel et al. 2021) against fixed per-sample
    prompts, as a consistency-style metric; the scoring itself is ``rgb_metrics.CLIPScorer``."""

    name, kind = "clip_score", "score"

    def __init__(self, model_dir: str | os.PathLike, prompts: Sequence[str]):
        from .rgb_metrics import CLIPScorer
        self.scorer = CLIPScorer(model_dir)
        self.prompts = list(prompts)

    def __call__(self, x, ref=None):
        return self.scorer(x, self.prompts)


BUILTIN = ("mse", "feature_cosine")
OPTIONAL = ("lpips", "clip_image", "dreamsim", "clip_score")


def build_consistency_metrics(names: Sequence[str], extractor=None, lpips_net: str = "alex",
                              clip_weights=None, clip_arch: str = "ViT-B-32", dreamsim_dir=None,
                              clip_score_dir=None, prompts: Sequence[str] | None = None) -> list:
    """Metric objects by name; optional ones fail here (before any sampling) when their weights are absent."""
    out = []
    for n in names:
        if n == "mse":
            out.append(MSEDistance())
        elif n == "feature_cosine":
            if extractor is None:
                raise ValueError("feature_cosine: needs a feature extractor (e.g. the project classifier)")
            out.append(FeatureCosineDistance(extractor))
        elif n == "lpips":
            out.append(LPIPSDistance(lpips_net))
        elif n == "clip_image":
            if clip_weights is None:
                raise ValueError("clip_image: pass clip_weights, a local open_clip checkpoint file")
            out.append(CLIPImageSimilarity(clip_weights, clip_arch))
        elif n == "dreamsim":
            if dreamsim_dir is None:
                raise ValueError("dreamsim: pass dreamsim_dir, a folder holding the DreamSim weights")
            out.append(DreamSimDistance(dreamsim_dir))
        elif n == "clip_score":
            if clip_score_dir is None or prompts is None:
                raise ValueError("clip_score: pass clip_score_dir (a local CLIP folder) and prompts")
            out.append(CLIPPromptScore(clip_score_dir, prompts))
        else:
            raise ValueError(f"metrics: unknown metric {n!r}; valid: {', '.join(BUILTIN + OPTIONAL)}")
    return out


def evaluate_metric(metric: ConsistencyMetric, x: torch.Tensor, ref: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Per-sample values in batches; refuses wrong shapes and non-finite values (never a silent zero)."""
    if getattr(metric, "kind", None) not in KINDS:
        raise ValueError(f"metric {getattr(metric, 'name', metric)!r}: kind must be one of {KINDS}")
    vals = []
    for i in range(0, x.shape[0], batch):
        v = metric(x[i:i + batch], ref[i:i + batch])
        n = min(batch, x.shape[0] - i)
        if not isinstance(v, torch.Tensor) or v.reshape(-1).shape[0] != n:
            raise ValueError(f"metric {metric.name!r}: expected {n} per-sample values, got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        v = v.detach().reshape(-1).double()
        if not bool(torch.isfinite(v).all()):
            raise FloatingPointError(f"metric {metric.name!r}: non-finite values")
        vals.append(v)
    return torch.cat(vals)


def consistency_curves(snaps, metrics: Sequence[ConsistencyMetric], batch: int = 250) -> dict:
    """For each metric: mean, std and standard error over samples of d(result at mark, final result), per mark
    (for 'score' metrics: the score of the result at each mark). Computed once per distinct snapshot."""
    final = snaps.final
    out = {}
    for m in metrics:
        per = [evaluate_metric(m, img, final, batch) for img in snaps.images]
        mean = [float(per[j].mean()) for j in snaps.mark_index]
        std = [float(per[j].std()) if per[j].numel() > 1 else 0.0 for j in snaps.mark_index]
        n = final.shape[0]
        out[m.name] = dict(kind=m.kind, mean=mean, std=std, sem=[s / n ** 0.5 for s in std])
    return out
