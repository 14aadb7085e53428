"""Metrics that mean the same on every machine (SPEC section 10).

- Fréchet distance between Gaussians fitted to features, with a symmetric PSD square root.
- Pixel FID exactly as seed ``001_...``: 784 pixel values in [0, 1], generated images against the
  first 1000 test images.
- Classifier FID (the headline): the same distance on the 128 penultimate features of the shipped
  MNIST classifier (zoo/common/classifier.py), against statistics of all 10k test images (grey
  test images for grey models, threshold-binarised ones for binarised models), cached in
  ``$ZOO_DATA/classifier_stats/`` keyed by the classifier's SHA-256, the binarisation and the
  test images' own hash.
- Agreement: the share of samples the classifier assigns to the label they were asked for.
- Unit conversions: nats per image <-> bits per dimension.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

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
    w, v = scipy.linalg.eigh((a + a.T) / 2, driver="evd")  # divide and conquer: the fastest here
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


# --------------------------------------------------------------------------- classifier metrics


@torch.no_grad()
def classifier_features(images_unit: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate features (N, 128) of the shipped classifier for images in [0, 1] (N, 1, 28, 28)."""
    from zoo.common.classifier import shipped_classifier

    net = shipped_classifier()
    x = images_unit.detach().float().cpu().reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def classifier_predict(images_unit: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The shipped classifier's argmax label (N,) for images in [0, 1]."""
    from zoo.common.classifier import shipped_classifier

    net = shipped_classifier()
    x = images_unit.detach().float().cpu().reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return torch.cat([net(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def agreement(samples_unit: torch.Tensor, labels: torch.Tensor | int) -> float:
    """Share of samples whose classifier argmax equals the requested label (a tensor (N,) or one int)."""
    pred = classifier_predict(samples_unit)
    labels = torch.as_tensor(labels, dtype=torch.long).expand(len(pred))
    return float((pred == labels.cpu()).float().mean())


def reference_images(binarised: bool = False, limit: int | None = None) -> torch.Tensor:
    """MNIST test images in [0, 1]: grey (k/255), or binarised at 0.5 as {0, 1}."""
    from zoo.common.data import load_mnist

    if binarised:
        ref, _ = load_mnist("test", view="binary", limit=limit)
        return (ref + 1) / 2
    ref, _ = load_mnist("test", view="unit", limit=limit)
    return ref


@functools.lru_cache(maxsize=4)
def _test_images_hash(path: str, mtime_ns: int, size: int) -> str:
    from zoo.common.data import load_uint8

    x, _ = load_uint8("test")
    return f"test{len(x)}-{hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]}"


def _stats_path(binarised: bool) -> Path:
    """Cache file for the reference statistics: keyed by classifier, binarisation and test images."""
    from zoo.common.classifier import classifier_hash
    from zoo.common.data import cache_dir, load_uint8, mnist_path

    try:
        st = mnist_path().stat()
    except OSError:
        load_uint8("test")  # raises the one-line "MNIST is not cached" error
        raise
    data_key = _test_images_hash(str(mnist_path()), st.st_mtime_ns, st.st_size)
    view = "binary" if binarised else "grey"
    return cache_dir() / "classifier_stats" / f"{classifier_hash()[:16]}-{view}-{data_key}.npz"


def reference_stats(binarised: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the classifier features of all the test images (cached on disk)."""
    from zoo.common.utils import atomic_write_bytes

    path = _stats_path(binarised)
    if path.exists():
        try:
            with np.load(path) as z:
                return z["mu"], z["cov"]
        except (OSError, ValueError, KeyError, EOFError):
            pass  # an unreadable cache file is recomputed and replaced
    mu, cov = gaussian_stats(classifier_features(reference_images(binarised)))
    atomic_write_bytes(path, lambda f: np.savez(f, mu=mu, cov=cov))
    return mu, cov


def classifier_fid(samples_unit: torch.Tensor, binarised: bool = False) -> float:
    """Fréchet distance between the classifier features of `samples_unit` (N, 1, 28, 28) in [0, 1]
    and those of the 10k test images (threshold-binarised ones when `binarised`)."""
    x = samples_unit.detach().float().clamp(0, 1)
    return frechet_distance(*gaussian_stats(classifier_features(x)), *reference_stats(binarised))


def sample_metrics(samples_unit: torch.Tensor, binarised: bool = False, n_ref: int = 1000) -> dict[str, float]:
    """Every sample-quality number for MNIST-shaped samples in [0, 1]: the one entry point used by
    `zoo eval` and the experiments, so adding a metric here adds it everywhere.

    ``pixel_fid``: seed 001's FID against the first `n_ref` test images; ``classifier_fid``: against
    the classifier statistics of all the test images. `binarised` compares with binarised test images.
    """
    reference = reference_images(binarised, limit=n_ref) if binarised else None
    return {"pixel_fid": pixel_fid(samples_unit, reference=reference, n_ref=n_ref),
            "classifier_fid": classifier_fid(samples_unit, binarised=binarised)}


def total_variation(x_unit: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontally and vertically neighbouring pixels, per image (N,)."""
    dx = (x_unit[..., :, 1:] - x_unit[..., :, :-1]).abs().flatten(1).sum(1)  # (N,)
    dy = (x_unit[..., 1:, :] - x_unit[..., :-1, :]).abs().flatten(1).sum(1)  # (N,)
    return (dx + dy) / x_unit[0].numel()


def floor_and_ceiling(n: int = 10000, binarised: bool = False, seed: int = 0, n_ref: int = 1000,
                      ceiling: bool = True) -> dict[str, float]:
    """What `zoo eval-data` prints: classifier and pixel FID of the first `n` MNIST train images
    (the floor: what real digits score) and of `n` images of uniform noise in [0, 1]
    (the ceiling, unless `ceiling` is False), each against the test references of `sample_metrics`
    (pixel FID: the first `n_ref` test images), with their mean total variation. With `binarised`,
    the train images are binarised at 0.5 and the noise is fair coins in {0, 1}."""
    from zoo.common.data import load_mnist

    if binarised:
        train, _ = load_mnist("train", view="binary", limit=n)
        train = (train + 1) / 2
    else:
        train, _ = load_mnist("train", view="unit", limit=n)
    sets = {"train": train}
    if ceiling:
        gen = torch.Generator().manual_seed(seed)
        noise = torch.rand(len(train), 1, 28, 28, generator=gen)  # (n, 1, 28, 28)
        sets["noise"] = (noise < 0.5).float() if binarised else noise
    out = {}
    for name, x in sets.items():
        for key, value in sample_metrics(x, binarised=binarised, n_ref=n_ref).items():
            out[f"{name}_{key}"] = value
        out[f"{name}_total_variation"] = float(total_variation(x).mean())
    return out


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two point clouds (N, D), (M, D): the root mean over
    fixed random unit directions of the squared 1-D W2 distance between the sorted projections
    (the first min(N, M) points of each cloud are used). For 2-D toys and spirals."""
    a, b = a.detach().float().flatten(1), b.detach().float().flatten(1)
    n = min(len(a), len(b))
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], n_proj, generator=g)
    theta = theta / theta.norm(dim=0)  # (D, P) unit directions
    pa = (a[:n] @ theta).sort(0).values  # (N, P)
    pb = (b[:n] @ theta).sort(0).values
    return ((pa - pb) ** 2).mean().sqrt().item()
