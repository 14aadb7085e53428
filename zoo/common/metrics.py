"""Metrics that mean the same on every machine (SPEC section 10).

- Fréchet distance between Gaussians fitted to features, with a symmetric PSD square root.
- Pixel FID exactly as seed ``001_...``: 784 pixel values in [0, 1], generated images against the
  first 1000 test images.
- Unit conversions: nats per image <-> bits per dimension.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch


def nats_to_bpd(nats: float | torch.Tensor, dims: int = 784) -> float | torch.Tensor:
    """Nats per example -> bits per dimension."""
    return nats / (dims * math.log(2))


def bpd_to_nats(bpd: float | torch.Tensor, dims: int = 784) -> float | torch.Tensor:
    """Bits per dimension -> nats per example."""
    return bpd * dims * math.log(2)


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of features (N, D), in float64."""
    f = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features, np.float64)
    f = f.reshape(len(f), -1)
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix by eigendecomposition (negative eigenvalues clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), with the symmetric form
    (C1 C2)^(1/2) ~ (C1^(1/2) C2 C1^(1/2))^(1/2), which has the same trace and is PSD."""
    s1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(s1 @ cov2 @ s1)
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross))
    return max(d, 0.0)


def fid_from_features(f1, f2) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N1, D), (N2, D)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def pixel_fid(samples: torch.Tensor, reference: torch.Tensor | None = None, n_ref: int = 1000) -> float:
    """Seed 001's FID on raw pixels: images in [0, 1] (any shape (N, ...) with 784 values each)
    against `reference`, by default the first `n_ref` MNIST test images in [0, 1]."""
    if reference is None:
        from zoo.common.data import load_mnist

        reference, _ = load_mnist("test", view="unit", limit=n_ref)
    x = samples.detach().float().reshape(len(samples), -1).clamp(0, 1)
    r = reference.detach().float().reshape(len(reference), -1)
    return fid_from_features(x, r)


def scipy_frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """The textbook formula with scipy.linalg.sqrtm of C1 C2 (used to cross-check the PSD form)."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * covmean))


def sample_metrics(samples_unit: torch.Tensor, binarised: bool = False, n_ref: int = 1000) -> dict[str, float]:
    """Every sample-quality number for MNIST-shaped samples in [0, 1]: the one entry point used by
    `zoo eval` and the experiments, so adding a metric here adds it everywhere."""
    reference = None
    if binarised:
        from zoo.common.data import load_mnist

        ref, _ = load_mnist("test", view="binary", limit=n_ref)
        reference = (ref + 1) / 2
    return {"pixel_fid": pixel_fid(samples_unit, reference=reference, n_ref=n_ref)}
