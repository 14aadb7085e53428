"""Fréchet distance, pixel FID (seed 001), classifier FID, agreement and units (SPEC section 10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from numpy.linalg import eigh  # as seed 001 imports it

from tests.conftest import make_fake_mnist
from zoo.common import data, metrics


def _random_spd(d, rng, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


def _seed_fid(features1: np.ndarray, features2: np.ndarray) -> float:
    """Seed 001's `fid`, verbatim."""
    mu1, mu2 = features1.mean(axis=0), features2.mean(axis=0)
    C1 = np.cov(features1, rowvar=False)
    C2 = np.cov(features2, rowvar=False)
    diff = mu1 - mu2
    mean_term = diff.dot(diff)
    w1, V1 = eigh(C1)
    w1 = np.clip(w1, 0, None)
    C1_sqrt = V1 @ np.diag(np.sqrt(w1)) @ V1.T
    S = C1_sqrt @ C2 @ C1_sqrt
    wS, VS = eigh(S)
    wS = np.clip(wS, 0, None)
    covmean = VS @ np.diag(np.sqrt(wS)) @ VS.T
    trace_term = np.trace(C1 + C2 - 2 * covmean)
    return mean_term + trace_term


# --------------------------------------------------------------------------- Fréchet distance


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 30)) @ rng.standard_normal((30, 30))
    b = rng.standard_normal((300, 30)) * 2 + 1
    assert metrics.fid_from_features(a, a) == pytest.approx(0, abs=1e-8 * np.trace(np.cov(a.T)))
    ab, ba = metrics.fid_from_features(a, b), metrics.fid_from_features(b, a)
    assert ab > 10
    assert ab == pytest.approx(ba, rel=1e-9)
    x = torch.rand(64, 1, 14, 14)  # pixel_fid flattens any image shape; 196 pixels keep it fast
    assert metrics.pixel_fid(x, reference=x) == pytest.approx(0, abs=1e-8)


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_distance_matches_closed_form_for_commuting_covariances(rotate):
    """C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T commute: the trace term is sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(1)
    d = 12
    a, b = rng.uniform(0, 3, d), rng.uniform(0, 3, d)
    a[:3] = 0  # rank-deficient C1, as in pixel FID: the PSD clipping must handle it
    q = np.linalg.qr(rng.standard_normal((d, d)))[0] if rotate else np.eye(d)
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    # rel 1e-7: rotating the zero eigenvalues leaves ~1e-16 ones whose square roots are ~1e-8
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-7)
    # one dimension: the Wasserstein-2 distance between N(m1, s1^2) and N(m2, s2^2)
    assert metrics.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]),
                                    np.array([[9.0]])) == pytest.approx(2 ** 2 + (2 - 3) ** 2)


def test_frechet_distance_general_covariances_against_scipy_sqrtm_and_brute_force():
    rng = np.random.default_rng(2)
    d = 20
    c1, c2 = _random_spd(d, rng), _random_spd(d, rng)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ours = metrics.frechet_distance(mu1, c1, mu2, c2)
    # textbook formula with scipy.linalg.sqrtm of the non-symmetric product C1 C2
    assert ours == pytest.approx(metrics.scipy_frechet_distance(mu1, c1, mu2, c2), rel=1e-8)
    # brute force: tr (C1 C2)^(1/2) = sum of square roots of the (real, >= 0) eigenvalues of C1 C2
    lam = np.linalg.eigvals(c1 @ c2)
    assert np.abs(lam.imag).max() < 1e-8 and lam.real.min() > 0
    brute = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sum(np.sqrt(lam.real))
    assert ours == pytest.approx(brute, rel=1e-8)
    # the symmetric square root itself squares back to its argument
    s = metrics._sqrtm_psd(c1)
    np.testing.assert_allclose(s @ s, c1, atol=1e-10)
    np.testing.assert_allclose(s, scipy.linalg.sqrtm(c1).real, atol=1e-8)


def test_frechet_distance_on_rank_deficient_covariances_is_finite_and_agrees_with_scipy():
    """Fewer samples than dimensions (pixel FID: 1000 images, 784 pixels with many constant ones)."""
    rng = np.random.default_rng(3)
    f1, f2 = rng.standard_normal((40, 60)), rng.standard_normal((50, 60)) * 1.5
    ours = metrics.fid_from_features(f1, f2)
    ref = metrics.scipy_frechet_distance(*metrics.gaussian_stats(f1), *metrics.gaussian_stats(f2))
    assert math.isfinite(ours) and ours > 0
    assert ours == pytest.approx(ref, rel=1e-4)


def test_pixel_fid_is_seed_001_fid():
    """pixel_fid flattens the images and applies seed 001's `fid`; 14 x 14 images (196 pixels) keep
    the four eigendecompositions fast, the 784-pixel case runs in the halves test below."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, 14, 14, generator=g) ** 3  # (N, 1, 14, 14) in [0, 1]
    r = (torch.rand(300, 1, 14, 14, generator=g) < 0.2).float()
    expected = _seed_fid(x.reshape(300, -1).double().numpy(), r.reshape(300, -1).double().numpy())
    assert metrics.pixel_fid(x, reference=r) == pytest.approx(expected, rel=1e-6)
    # pixel_fid clamps samples to [0, 1] before applying the seed's formula
    assert metrics.pixel_fid(x * 3 - 1, reference=r) == pytest.approx(
        _seed_fid((x * 3 - 1).clamp(0, 1).reshape(300, -1).double().numpy(), r.reshape(300, -1).double().numpy()),
        rel=1e-6)


def test_units_round_trip():
    assert metrics.nats_to_bpd(784 * math.log(2)) == pytest.approx(1.0)
    assert metrics.bpd_to_nats(metrics.nats_to_bpd(123.4)) == pytest.approx(123.4)
    t = torch.tensor([80.0, 100.0], dtype=torch.float64)
    torch.testing.assert_close(metrics.bpd_to_nats(metrics.nats_to_bpd(t)), t)


# --------------------------------------------------------------------------- on (real or generated) MNIST


@pytest.fixture
def mnist(tmp_path, monkeypatch):
    """Real MNIST when cached (the numbers that matter), else a generated MNIST with 2000 test
    images stored in a private cache. Returns whether the data is real."""
    if data.is_cached():
        return True
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "cache"))
    data._store(make_fake_mnist(n_train=100, n_valid=10, n_test=2000, seed=5))
    return False


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """A generated MNIST with 300 test images in a private cache (for the caching plumbing)."""
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "cache"))
    data._store(make_fake_mnist(n_train=100, n_valid=10, n_test=300, seed=6))
    return tmp_path / "cache"


def test_fid_of_random_test_halves_is_small_and_of_noise_is_large(mnist):
    x, _ = data.load_mnist("test", view="unit")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:4000]
    n = len(perm) // 2
    first, second = x[perm[:n]], x[perm[n:]]  # two independent halves (of up to 4000 images)
    noise = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    feats = [metrics.classifier_features(v).numpy() for v in (first, second, noise)]
    halves, ceiling = metrics.fid_from_features(feats[0], feats[1]), metrics.fid_from_features(feats[0], feats[2])
    pix_halves, pix_noise = metrics.pixel_fid(first, second), metrics.pixel_fid(noise, second)
    if mnist:  # real digits, 2000 vs 2000: measured 0.12 / 341 (classifier), 1.5 / 195 (pixels)
        assert halves < 0.5 and ceiling > 200
        assert pix_halves < 3.0 and pix_noise > 100
    else:  # generated blobs, 1000 vs 1000: the same ordering by a wide margin
        assert ceiling > 50 * halves
        assert pix_noise > 20 * pix_halves


def test_classifier_fid_reference_stats_are_cached_and_keyed(small_mnist):
    from zoo.common.classifier import classifier_hash

    x, _ = data.load_mnist("test", view="unit", limit=100)
    fid_grey = metrics.classifier_fid(x)
    path_grey, path_bin = metrics._stats_path(False), metrics._stats_path(True)
    assert path_grey.exists() and not path_bin.exists()
    assert path_grey.parent == small_mnist / "classifier_stats"
    assert classifier_hash()[:16] in path_grey.name and "grey" in path_grey.name and "binary" in path_bin.name
    with np.load(path_grey) as z:
        mu, cov = z["mu"], z["cov"]
    ref = metrics.classifier_features(data.load_mnist("test", view="unit")[0]).double().numpy()  # all 300
    np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cov, np.cov(ref, rowvar=False), rtol=1e-6, atol=1e-7)
    assert metrics.classifier_fid(x) == pytest.approx(fid_grey, rel=1e-12)  # from the cache now
    # a binarised model is compared with binarised test images: other statistics, another file
    xb = (x > 0.5).float()
    assert metrics.classifier_fid(xb, binarised=True) < metrics.classifier_fid(xb, binarised=False)
    assert path_bin.exists()
    # other test images (another data hash) never reuse the file
    data._store(make_fake_mnist(n_train=100, n_valid=10, n_test=300, seed=7))
    assert metrics._stats_path(False) != path_grey
    # a corrupt cache file is recomputed, not trusted
    data._store(make_fake_mnist(n_train=100, n_valid=10, n_test=300, seed=6))
    path_grey.write_bytes(b"not an npz")
    assert metrics.classifier_fid(x) == pytest.approx(fid_grey, rel=1e-9)


def test_sample_metrics_keeps_pixel_fid_and_adds_classifier_fid(small_mnist, monkeypatch):
    x, _ = data.load_mnist("test", view="unit", limit=200)
    # pixel FID's default reference is the first n_ref test images: the test set against itself is 0
    test_all = data.load_mnist("test", view="unit")[0]  # 300 images, all within the first 1000
    assert metrics.sample_metrics(test_all)["pixel_fid"] == pytest.approx(0, abs=1e-6)
    calls = []  # pixel FID itself is checked above and against seed 001; here: which reference
    monkeypatch.setattr(metrics, "pixel_fid", lambda s, reference=None, n_ref=1000: calls.append(reference) or 1.5)
    out = metrics.sample_metrics(x)
    assert out == {"pixel_fid": 1.5, "classifier_fid": pytest.approx(metrics.classifier_fid(x))}
    assert calls[-1] is None  # grey: the first 1000 grey test images
    xb = (data.load_mnist("test", view="binary", limit=200)[0] + 1) / 2
    outb = metrics.sample_metrics(xb, binarised=True)
    assert outb["classifier_fid"] == pytest.approx(metrics.classifier_fid(xb, binarised=True))
    torch.testing.assert_close(calls[-1], (data.load_mnist("test", view="binary", limit=1000)[0] + 1) / 2)
    assert set(calls[-1].unique().tolist()) == {0.0, 1.0}


def test_agreement_on_known_labels(mnist):
    x, y = data.load_mnist("test", view="unit", limit=500)
    pred = metrics.classifier_predict(x)
    assert metrics.agreement(x, pred) == 1.0
    assert metrics.agreement(x, (pred + 1) % 10) == 0.0
    half = torch.where(torch.arange(len(x)) % 2 == 0, pred, (pred + 1) % 10)
    assert metrics.agreement(x, half) == pytest.approx(0.5)
    assert metrics.agreement(x, 3) == pytest.approx(float((pred == 3).float().mean()))
    if mnist:  # the real labels: the classifier agrees with nearly all of them
        assert metrics.agreement(x, y) >= 0.99
        assert metrics.agreement(x, (y + 1) % 10) <= 0.01
    else:  # generated blobs are not digits; the 200 shipped real test digits have known labels
        from zoo.common.classifier import test_slice

        xs, ys = test_slice()
        assert metrics.agreement(xs, ys) >= 0.98
        assert metrics.agreement(xs, (ys + 1) % 10) <= 0.02
