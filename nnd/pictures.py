"""Pictures: sample scatters and image grids, laws side by side, and ℓ_{q,p}(u) curves.

matplotlib with the Agg backend, imported lazily (only pictures need it). Every
picture is written through :mod:`nnd.paths` (a local or ``gs://`` path) and its PNG
bytes are returned (TensorBoard shows them too).
"""

from __future__ import annotations

import io

import numpy as np

from nnd import paths

__all__ = ["pyplot", "save", "samples_png", "samples_title", "side_by_side_png", "shift_kl_png",
           "image_grid"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def image_grid(x_NxHxWxC, max_images: int = 64) -> np.ndarray:
    """A square grid [rows·(H+1)+1, cols·(W+1)+1, C] of images in [-1, 1], mapped to [0, 1]."""
    x = np.clip((np.asarray(x_NxHxWxC[:max_images], np.float32) + 1.0) / 2.0, 0.0, 1.0)
    n, h, w, c = x.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = x[i]
    return grid


def _draw(ax, samples, title):
    """A scatter for [N, 2] samples, an image grid for [N, H, W, C]."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
    else:
        grid = image_grid(samples)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid,
                  cmap="gray" if grid.shape[-1] == 1 else None, interpolation="nearest")
        ax.axis("off")
    ax.set_title(title, fontsize=8)


def save(fig, path, **savefig_kwargs) -> bytes:
    """Saves ``fig`` as a PNG at ``path`` (local or remote), closes it and returns the bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **savefig_kwargs)
    pyplot().close(fig)
    paths.write(path, buffer.getvalue())
    return buffer.getvalue()


def _save(fig, path) -> bytes:
    return save(fig, path, dpi=120, bbox_inches="tight")


def samples_png(samples, path: str, title: str) -> bytes:
    """A scatter plot of [N, 2] samples or an image grid of [N, H, W, C] samples, as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    _draw(ax, samples, title)
    return _save(fig, path)


def samples_title(dataset: str, q, p, sampler: str, law, nfe: float | None = None) -> str:
    """The caption of a samples picture: data, (q, p), sampler, increment law and NFE."""
    title = f"{dataset}: q={q}, p={p}; {sampler} sampler, law {law}"
    return title + (f", NFE {nfe:.0f}" if nfe is not None else "")


def side_by_side_png(panels: dict, path: str, title: str) -> bytes:
    """One panel per entry ``{label: samples}`` in a row (the paper's Figure 1 layout)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.3), squeeze=False)
    for ax, (label, samples) in zip(axes[0], panels.items()):
        _draw(ax, samples, label)
        if np.asarray(samples).ndim == 2:
            ax.set_xlim(-1.8, 1.8)
            ax.set_ylim(-1.8, 1.8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def shift_kl_png(curves: dict, path: str, title: str, highlight: str | None = None) -> bytes:
    """ℓ_{q,p}(u) against u: ``curves = {label: (u, ell)}``; ``highlight`` drawn thicker."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (u, ell) in curves.items():
        ax.plot(u, ell, label=label, lw=2.5 if label == highlight else 1.2)
    ax.set_xlabel("u  (mean shift in units of g√Δt)")
    ax.set_ylabel("ℓ_{q,p}(u) = KL(q(· - u) ‖ p)  [nats]")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
