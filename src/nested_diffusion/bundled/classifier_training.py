"""Training of the Fashion-MNIST feature classifier (AdamW + OneCycle, horizontal flips)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import load_fashion_mnist
from .classifier import FashionClassifier


@torch.no_grad()
def accuracy(model: FashionClassifier, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def train_classifier(out_dir: str | Path, epochs: int = 3, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     data_dir: str | None = None, log=print) -> dict:
    torch.manual_seed(seed)
    x, y = load_fashion_mnist("train", data_dir)
    xt, yt = load_fashion_mnist("test", data_dir)
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0, step = time.time(), 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {accuracy(model, xt, yt):.4f}, "
            f"{time.time() - t0:.0f} s")
    acc = accuracy(model, xt, yt)
    model.save_pretrained(out_dir)
    return {"test_accuracy": acc, "epochs": epochs, "seconds": time.time() - t0}
