"""The bundled Fashion-MNIST model as a denoiser: v-prediction, cosine schedule, learned variance, CFG."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .data import CLASS_NAMES
from ..core.denoisers import ClassifierFreeGuidance, ModelDenoiser
from ..core.run import RunDefaults
from .pretrained import bundled_model_path
from .unet import TinyUNet

DEFAULT_GUIDANCE = 2.0  # the evaluation protocol's scale (docs/RESULTS.md tables, shipped calibrations, eval runners)
# what `generate` and the web demo use: the lowest final FD for both vanilla DDPM-100 and the progressive nested
# schedule among the scales measured at 100 NFE (2,000 samples; docs/RESULTS.md, issue 15)
DEMO_GUIDANCE = 1.25
# the bundled family's run defaults (core.run), read by every surface: the ramp schedule at 100 NFE (quick inner runs
# of 10 and 20 steps from t = 999 and 899, then one of 70 from 799), learned-variance DDPM inner, deterministic DDIM
# outer, guidance 1.25 — the lowest anytime AUC on the held-out front whose final FD is within +2% of the best vanilla
# sampler's (docs/RESULTS.md, "The anytime frontier", issue 23)
RUN_DEFAULTS = RunDefaults(schedule="ramp", nfe=100, outer_steps=5, inner_steps=20, inner_solver="ddpm",
                           outer_eta=0.0, guidance=DEMO_GUIDANCE, dtype="float32")
# the compute dtypes the bundled model offers (bfloat16: a bfloat16 copy of the weights, ``TinyUNet.set_compute_dtype``)
DTYPES = ("float32", "bfloat16")


def parse_classes(spec: "str | Sequence[int | str]") -> list[int]:
    """'0,3,7', 'all', 'sandal,bag' or a list → class indices; clear error for unknown names/indices."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    every = [str(i) for i in range(len(CLASS_NAMES))]
    items = [x for it in items for x in (every if isinstance(it, str) and it.lower() == "all" else [it])]
    lookup = {n.lower(): i for i, n in enumerate(CLASS_NAMES)}
    lookup.update({"tshirt": 0, "t-shirt": 0, "top": 0, "boot": 9, "ankle-boot": 9})
    out = []
    for it in items:
        if isinstance(it, int) or (isinstance(it, str) and it.isdigit()):
            k = int(it)
            if not 0 <= k < len(CLASS_NAMES):
                raise ValueError(f"classes: {k} is not a class index; valid: 0–9 or names {', '.join(CLASS_NAMES)}")
            out.append(k)
        elif str(it).lower() in lookup:
            out.append(lookup[str(it).lower()])
        else:
            raise ValueError(f"classes: unknown class {it!r}; valid: 0–9, 'all' or names {', '.join(CLASS_NAMES)}")
    if not out:
        raise ValueError("classes: give at least one class")
    return out


def compute_dtype(dtype: "str | torch.dtype | None", option: str = "dtype") -> torch.dtype:
    """The torch dtype of a run's ``dtype`` for the bundled model (None: float32); ValueError naming ``option``
    for a dtype it does not offer."""
    name = "float32" if dtype is None else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"{option}: the bundled model computes in {' or '.join(DTYPES)}, got {name}")
    return getattr(torch, name)


def load_unet(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
              dtype: "str | torch.dtype | None" = None) -> TinyUNet:
    """The bundled (or a ``from_pretrained`` folder's) TinyUNet on ``device``, computing in ``dtype`` (None:
    float32; "bfloat16": on a bfloat16 copy of the weights, ``TinyUNet.set_compute_dtype``). Surfaces pass the run's resolved ``dtype``, whose
    default is the family's (``RUN_DEFAULTS.dtype``)."""
    dt = compute_dtype(dtype)
    return TinyUNet.from_pretrained(path or bundled_model_path(), device=device).set_compute_dtype(dt)


def make_denoiser(model: TinyUNet, guidance_scale: float = DEFAULT_GUIDANCE, check_finite: bool = True,
                  clip_x0: float | None = 1.0) -> ModelDenoiser:
    """CFG in the denoiser (hence in the inner process only, as in the paper); a guided pair is one NFE.
    The conditioning passed to the samplers is the (B,) tensor of class labels. The network computes in the
    model's own dtype (``load_unet(dtype=...)``); the sampler's maths stays float32."""
    null = lambda b, device: torch.full((b,), model.null_class, dtype=torch.long, device=device)  # noqa: E731
    # guide the v-prediction channels only; the variance channel comes from the conditional half (as DiT)
    guided = ClassifierFreeGuidance(model, guidance_scale, null, channels=model.config["in_channels"])
    return ModelDenoiser(guided, model.config["schedule"], model.config["prediction_type"],
                         learned_variance=model.config["learned_variance"], clip_x0=clip_x0,
                         check_finite=check_finite)
