"""PNG figures of the experiments (matplotlib's object API with the Agg canvas: no pyplot state, no display).
Each file is rendered into memory and written atomically."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..imaging import tile, to_uint8
from ..io import atomic_write_bytes


def _figure(w: float, h: float, ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"matplotlib is needed for the plots ({e}); install the eval extra") from e
    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_fd_curves(doc: dict, path: str | os.PathLike) -> Path:
    """Fig. 9 analog: FD of the anytime result vs NFE (step function on (n−Δ, n]), log y, one line per split."""
    fig, (ax,) = _figure(7.0, 4.5)
    marks = doc["marks"]
    x = [0] + marks
    for row in doc["configs"]:
        y = [row["fd"][0]] + row["fd"]
        ax.step(x, y, where="pre", label=f"{row['label']}  AUC {row['auc']:.1f}")
    floor = doc.get("noise_floor")
    if floor:
        ax.axhline(floor["mean"], color="grey", ls=":", label=f"noise floor (real, N={floor['n']})")
    ax.set_yscale("log")
    ax.set_xlim(0, marks[-1])
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"FD ({doc['feature_network']})")
    ax.set_title(f"Anytime FD per NFE, {doc['samples']} samples")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_budget_table(doc: dict, path: str | os.PathLike) -> Path:
    """Table 3 analog: FD at fractions of each budget, vanilla x̂0 preview (dashed) vs nested (solid)."""
    fig, (ax,) = _figure(7.0, 4.5)
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for k, N in enumerate(doc["budgets"]):
        rows = [r for r in doc["rows"] if r["budget"] == N]
        f = [100 * r["fraction"] for r in rows]
        c = colors[k % len(colors)]
        ax.plot(f, [r["vanilla_fd"] for r in rows], "--o", color=c, ms=3, label=f"vanilla {N} NFE")
        ax.plot(f, [r["nested_fd"] for r in rows], "-s", color=c, ms=3, label=f"nested {N} NFE")
    ax.set_yscale("log")
    ax.set_xlabel("% of the budget spent")
    ax.set_ylabel(f"FD ({doc['feature_network']})")
    ax.set_title(f"Intermediate results, {doc['samples']} samples")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_consistency(doc: dict, path: str | os.PathLike) -> Path:
    """Fig. 11 analog: distance of the anytime result from the final image vs NFE, one panel per metric."""
    names = list(doc["metrics"])
    fig, axes = _figure(4.0 * len(names), 3.6, ncols=len(names))
    marks = np.asarray(doc["marks"])
    for ax, name in zip(axes, names):
        for row in doc["configs"]:
            c = row["curves"][name]
            m, s = np.asarray(c["mean"]), np.asarray(c["sem"])
            ax.step(marks, m, where="pre", label=row["label"])        # the result holds until the next update
            ax.fill_between(marks, m - s, m + s, step="pre", alpha=0.2)
        ax.set_xlabel("NFE")
        ax.set_title(f"{name} ({doc['metrics'][name]} to final)")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def qualitative_figure(grids: dict, rows_nfe: Sequence[int], samples: Sequence[int], path: str | os.PathLike,
                       scale: int = 2) -> Path:
    """Fig. 10 analog. ``grids``: {config label: [tensor (S, C, H, W) per row NFE]}. One block of columns per
    sample, one column per configuration, progression top to bottom."""
    labels = list(grids)
    blank = None
    cells = []
    for r in range(len(rows_nfe)):
        imgs = {lab: to_uint8(grids[lab][r]) for lab in labels}
        for s in range(len(samples)):
            if s:
                blank = np.full_like(imgs[labels[0]][0], 255) if blank is None else blank
                cells.append(blank)
            cells.extend(imgs[lab][s] for lab in labels)
    cols = len(samples) * len(labels) + len(samples) - 1
    canvas = tile(cells, len(rows_nfe), cols, scale)
    h, w = grids[labels[0]][0].shape[-2:]
    cw, ch = w * scale + 2, h * scale + 2
    fig, (ax,) = _figure(max(4.0, canvas.shape[1] / 60 + 1), max(3.0, canvas.shape[0] / 60 + 0.8))
    ax.imshow(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0, vmax=255)
    for s in range(len(samples)):
        for k, lab in enumerate(labels):
            col = s * (len(labels) + 1) + k
            ax.text(2 + col * cw + cw / 2, -4, lab.replace("x", "/"), ha="center", va="bottom", fontsize=6)
        mid = s * (len(labels) + 1) * cw + len(labels) * cw / 2
        ax.text(mid, canvas.shape[0] + 4, f"sample {samples[s]}", ha="center", va="top", fontsize=7)
    for r, n in enumerate(rows_nfe):
        ax.text(-4, 2 + r * ch + ch / 2, f"{n}", ha="right", va="center", fontsize=6)
    ax.set_axis_off()
    ax.set_title("outer/inner steps per column; NFE per row (top to bottom)", fontsize=8, pad=14)  # above labels
    return _save(fig, path)


def plot_restoration_psnr(doc: dict, path: str | os.PathLike) -> Path:
    """Table 2 analog: mean PSNR of the anytime nested-DDRM result vs NFE (one panel per task), vanilla DDRM as
    one marker at its NFE; error bars are ± one standard error over images."""
    tasks = list(doc["tasks"])
    fig, axes = _figure(3.2 * len(tasks), 3.4, ncols=len(tasks))
    for ax, name in zip(axes, tasks):
        row = doc["tasks"][name]
        nested = [c for c in doc["columns"] if c.startswith("nested_")]
        vanilla = [c for c in doc["columns"] if c.startswith("ddrm_")]
        nfe = [int(c.rsplit("@", 1)[1]) for c in nested]
        ax.errorbar(nfe, [row["psnr"][c] for c in nested], yerr=[row["psnr_sem"][c] or 0 for c in nested],
                    fmt="-o", ms=4, label="nested DDRM (anytime)")
        for c in vanilla:
            ax.errorbar([int(c.split("_")[1])], [row["psnr"][c]], yerr=[row["psnr_sem"][c] or 0], fmt="s",
                        color="C3", ms=5, label=f"vanilla DDRM {c.split('_')[1]} steps")
        ax.set_title(f"{name} (σ_y={row['sigma_y']})", fontsize=9)
        ax.set_xlabel("NFE")
        ax.set_ylabel("PSNR (dB)")
        ax.set_xticks(sorted(set(nfe)))
        ax.legend(fontsize=7)
    fig.suptitle(f"Nested DDRM, {doc['settings']['n_images']} Fashion-MNIST test images", fontsize=10)
    return _save(fig, path)
