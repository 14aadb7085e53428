"""Figure helpers (matplotlib, Agg backend, no screen needed): image grids and sample pictures."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile images (N, 1, H, W) with values in [0, 1] into one (rows*H, nrow*W) array."""
    x = images.detach().float().clamp(0, 1).cpu().numpy()[:, 0]  # (N, H, W)
    n, h, w = x.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = x[i]
    return grid


def grid_figure(panels: dict[str, torch.Tensor], nrow: int, scale: float = 0.32):
    """One figure with a titled image grid per panel (values in [0, 1])."""
    grids = {k: image_grid(v, nrow) for k, v in panels.items()}
    h, w = next(iter(grids.values())).shape
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * w * scale / 10 + 0.5, h * scale / 10 + 0.6),
                             squeeze=False)
    for ax, (title, g) in zip(axes[0], grids.items()):
        ax.imshow(g, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def save_picture(x_unit_or_points: torch.Tensor, out: str | Path, image: bool) -> None:
    """Write samples as one PNG: a square grid of images in [0, 1], or a scatter of 2-D points."""
    x = x_unit_or_points.detach().cpu()
    if image:
        plt.imsave(out, image_grid(x, nrow=int(math.ceil(math.sqrt(len(x))))), cmap="gray", vmin=0, vmax=1)
        return
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0], x[:, 1], s=3)
    ax.set_aspect("equal")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
