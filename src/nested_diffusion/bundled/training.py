"""Training of the bundled denoiser: v-prediction + IDDPM hybrid loss for the learned variance.

L = ‖v̂ − v‖² + L_vlb, where L_vlb is the KL (bits/dim) between q(x_{t−1}|x_t, x0) and the model's Gaussian
with a stop-gradient on the mean (Nichol & Dhariwal 2021, §3.1: λ·T·L_t with λ = 0.001, T = 1000).
Resumable: model, EMA, optimizer, step and RNG states are checkpointed atomically every few minutes.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_fashion_mnist
from .unet import TinyUNet
from ..core.noise_schedule import NoiseSchedule
from ..io import atomic_torch_save, atomic_write_json


@dataclass
class TrainConfig:
    out_dir: str = "runs/fashion-unet"
    total_steps: int = 15000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    ema_decay: float = 0.9995
    vlb_weight: float = 1.0
    checkpoint_minutes: float = 5.0
    max_minutes: float | None = None
    seed: int = 0
    channels: tuple[int, int] = (48, 96)
    data_dir: str | None = None
    threads: int | None = None


class HybridLoss:
    """v-MSE plus the variational bound term for the variance interpolation (IDDPM learned_range)."""

    def __init__(self, schedule: NoiseSchedule):
        ab = schedule.alphas_cumprod
        ab_prev = np.append(1.0, ab[:-1])
        betas = schedule.betas
        post_var = betas * (1 - ab_prev) / (1 - ab)
        as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.sqrt_ab, self.sqrt_1mab = as_t(np.sqrt(ab)), as_t(np.sqrt(1 - ab))
        self.log_beta = as_t(np.log(betas))
        self.log_post_var = as_t(np.log(np.append(post_var[1], post_var[1:])))  # clipped at t = 0 as in IDDPM
        self.coef_x0 = as_t(betas * np.sqrt(ab_prev) / (1 - ab))
        self.coef_xt = as_t((1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab))

    def __call__(self, model: TinyUNet, x0: torch.Tensor, labels: torch.Tensor,
                 t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, dict]:
        g = lambda a: a[t].view(-1, 1, 1, 1)  # noqa: E731
        a, s = g(self.sqrt_ab), g(self.sqrt_1mab)
        xt = a * x0 + s * noise
        out = model(xt, t, labels)
        c = x0.shape[1]
        v_pred, var_out = out[:, :c], out[:, c:]
        mse = F.mse_loss(v_pred, a * noise - s * x0)
        # VLB term with the mean frozen: only the variance interpolation learns from it
        x0_pred = a * xt - s * v_pred.detach()
        mean_p = g(self.coef_x0) * x0_pred + g(self.coef_xt) * xt
        mean_q = g(self.coef_x0) * x0 + g(self.coef_xt) * xt
        frac = (var_out + 1) / 2
        log_var_p = frac * g(self.log_beta) + (1 - frac) * g(self.log_post_var)
        log_var_q = g(self.log_post_var)
        kl = 0.5 * (-1 + log_var_p - log_var_q + torch.exp(log_var_q - log_var_p)
                    + (mean_q - mean_p) ** 2 * torch.exp(-log_var_p))
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean_p, log_var_p).flatten(1).mean(1) / math.log(2.0)
        vlb = torch.where(t == 0, nll, kl).mean()
        return mse + vlb * self.vlb_weight, {"mse": mse.item(), "vlb": vlb.item()}

    vlb_weight = 1.0


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log p(x) for 8-bit data in [−1, 1] under a Gaussian, integrating over each pixel's bin (DDPM §3.3)."""
    inv_std = torch.exp(-0.5 * log_var)
    centered = x - mean
    upper, lower = inv_std * (centered + 1 / 255), inv_std * (centered - 1 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    log_delta = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_delta))


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@dataclass
class _Run:
    """Everything a checkpoint holds."""

    model: TinyUNet
    ema: TinyUNet
    opt: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0
    history: list = field(default_factory=list)
    wall: float = 0.0

    def save(self, out: Path, cfg: TrainConfig, log) -> None:
        atomic_torch_save({"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                           "optimizer": self.opt.state_dict(), "generator": self.gen.get_state(), "step": self.step,
                           "history": self.history, "wall_seconds": self.wall, "config": asdict(cfg)},
                          out / "checkpoint.pt")
        self.ema.save_pretrained(out / "ema")
        log(f"checkpoint at step {self.step} ({self.wall / 60:.1f} min of training)")


def _start(cfg: TrainConfig, ckpt_path: Path, log) -> _Run:
    """A fresh run, or the checkpointed one (model, EMA, optimizer, data-order generator, history)."""
    model = TinyUNet(channels=tuple(cfg.channels))
    ema = TinyUNet(channels=tuple(cfg.channels))
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    run = _Run(model, ema, torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0),
               torch.Generator().manual_seed(cfg.seed))
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        run.model.load_state_dict(ck["model"])
        run.ema.load_state_dict(ck["ema"])
        run.opt.load_state_dict(ck["optimizer"])
        run.gen.set_state(ck["generator"])
        run.step, run.history, run.wall = ck["step"], ck["history"], ck["wall_seconds"]
        log(f"resumed from {ckpt_path} at step {run.step}")
    return run


def _step(run: _Run, loss_fn: "HybridLoss", x_all: torch.Tensor, y_all: torch.Tensor, cfg: TrainConfig) -> dict:
    """One optimizer step on a random batch (labels dropped to the null class for CFG), then the EMA update."""
    gen, model = run.gen, run.model
    idx = torch.randint(0, x_all.shape[0], (cfg.batch_size,), generator=gen)
    x0, labels = x_all[idx], y_all[idx].clone()
    labels[torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout] = model.null_class
    t = torch.randint(0, 1000, (cfg.batch_size,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    for group in run.opt.param_groups:
        group["lr"] = _lr_at(run.step, cfg)
    loss, parts = loss_fn(model, x0, labels, t, noise)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    params = list(model.parameters())
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    run.opt.step()
    run.step += 1
    decay = min(cfg.ema_decay, (1 + run.step) / (10 + run.step))
    with torch.no_grad():
        torch._foreach_lerp_(list(run.ema.parameters()), params, 1 - decay)
    return parts


def train(cfg: TrainConfig, log=print) -> Path:
    """Train (or resume) the bundled UNet. Returns the folder of the exported EMA model."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_all, y_all = load_fashion_mnist("train", cfg.data_dir)
    run = _start(cfg, out / "checkpoint.pt", log)
    loss_fn = HybridLoss(NoiseSchedule.from_name("cosine"))
    loss_fn.vlb_weight = cfg.vlb_weight
    t_start = t_ckpt = t_seg = time.time()
    run_mse = run_vlb = 0.0
    run.model.train()
    while run.step < cfg.total_steps:
        parts = _step(run, loss_fn, x_all, y_all, cfg)
        run_mse += parts["mse"]
        run_vlb += parts["vlb"]
        if run.step % 100:
            continue
        now = time.time()
        run.wall += now - t_seg
        t_seg = now
        run.history.append({"step": run.step, "mse": run_mse / 100, "vlb": run_vlb / 100, "wall_seconds": run.wall})
        log(f"step {run.step}  mse {run_mse / 100:.4f}  vlb {run_vlb / 100:.4f}  lr {_lr_at(run.step, cfg):.2e}  "
            f"{run.wall / 60:.1f} min")
        run_mse = run_vlb = 0.0
        if now - t_ckpt > cfg.checkpoint_minutes * 60:
            run.save(out, cfg, log)
            t_ckpt = time.time()
        if cfg.max_minutes is not None and now - t_start > cfg.max_minutes * 60:
            break
    run.wall += time.time() - t_seg
    run.save(out, cfg, log)
    atomic_write_json(out / "history.json", run.history)
    return out / "ema"
