"""ELBO in bits/dim: the discretised decoder, the KL terms, and a case with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo.gaussian.likelihood import bits_per_dim, discretized_gaussian_log_likelihood, elbo_terms, normal_kl
from zoo.gaussian.process import VPProcess
from zoo.gaussian.schedules import make_betas

f64 = torch.float64
CENTRES = 2 * torch.arange(256, dtype=f64) / 255 - 1  # the 8-bit bin centres in [-1, 1]


def _bin_probs(m: float, s: float) -> torch.Tensor:
    """P(bin k) of N(m, s^2) with edges halfway between centres, the edge bins open. (256,)"""
    inner = -1 + (2 * torch.arange(255, dtype=f64) + 1) / 255
    edges = torch.cat([torch.tensor([-math.inf], dtype=f64), inner, torch.tensor([math.inf], dtype=f64)])
    cdf = torch.special.ndtr((edges - m) / s)
    return cdf[1:] - cdf[:-1]


@pytest.mark.parametrize("mean,std", [(0.1, 0.5), (0.0, 0.004), (0.999, 0.01), (5.0, 0.01), (-3.0, 1.0)])
def test_discretized_decoder_is_a_distribution_over_the_bins(mean, std):
    logp = discretized_gaussian_log_likelihood(CENTRES, torch.tensor(mean, dtype=f64), torch.tensor(std, dtype=f64))
    assert logp.dtype == f64 and bool((logp <= 0).all())
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    ref = _bin_probs(mean, std)
    ok = ref > 1e-6  # where the direct difference of CDFs is accurate to ~1e-10
    torch.testing.assert_close(logp[ok], ref[ok].log(), rtol=1e-8, atol=1e-9)


def test_decoder_far_tail_is_finite():
    logp = discretized_gaussian_log_likelihood(torch.tensor([0.0, 1.0]), torch.tensor(-0.9), torch.tensor(0.01))
    assert bool(torch.isfinite(logp).all())
    # Far in the tail the bin mass is ~ pdf at its nearest edge times the width: check the order of magnitude.
    z = (0.0 - 1 / 255 + 0.9) / 0.01
    assert logp[0].item() == pytest.approx(-0.5 * z * z - math.log(z) - 0.5 * math.log(2 * math.pi), abs=0.05)


def test_normal_kl_closed_form():
    m1, v1, m2, v2 = (torch.tensor(v, dtype=f64) for v in (0.3, 0.5, -0.2, 2.0))
    g = torch.Generator().manual_seed(0)
    x = m1 + v1.sqrt() * torch.randn(400000, dtype=f64, generator=g)
    logq = -0.5 * (x - m1) ** 2 / v1 - 0.5 * v1.log()
    logp = -0.5 * (x - m2) ** 2 / v2 - 0.5 * v2.log()
    mc = (logq - logp).mean().item()
    assert normal_kl(m1, v1, m2, v2).item() == pytest.approx(mc, abs=5e-3)
    assert normal_kl(m1, v1, m1, v1).item() == 0


def _exact_eps(process, m, s):
    def denoiser(x_t, t):
        a = process.gather(process.alpha_bars.sqrt(), t, x_t)
        b = process.gather((1 - process.alpha_bars).sqrt(), t, x_t)
        x0_hat = m + a * s * s / (a * a * s * s + b * b) * (x_t - a * m)
        return (x_t - a * x0_hat) / b

    return denoiser


def _analytic_elbo_bits(process: VPProcess, m: float, s: float, variance: str) -> float:
    """The same bound computed independently: the exact denoiser is affine in x_t, so every
    E_{x_t} KL is closed form; the decoder expectation over x_1 uses Gauss-Hermite quadrature."""
    b_ = process.betas.numpy()
    al, ab = 1 - b_, np.cumprod(1 - b_)
    abp = np.concatenate([[1.0], ab[:-1]])
    x0 = CENTRES.numpy()
    P = _bin_probs(m, s).numpy()

    def affine_mu(i):  # mu_theta(x) = A x + C for step index i = t - 1
        a, b = np.sqrt(ab[i]), np.sqrt(1 - ab[i])
        g = a * s * s / (a * a * s * s + b * b)
        ex, ec = (1 - a * g) / b, -a * m * (1 - g * a) / b  # eps_hat = ex x + ec
        return (1 - b_[i] / b * ex) / np.sqrt(al[i]), -(b_[i] / b * ec) / np.sqrt(al[i])

    total = np.zeros_like(x0)
    for i in range(1, len(b_)):
        a, b = np.sqrt(ab[i]), np.sqrt(1 - ab[i])
        c0, c1 = np.sqrt(abp[i]) * b_[i] / (1 - ab[i]), np.sqrt(al[i]) * (1 - abp[i]) / (1 - ab[i])
        bt = (1 - abp[i]) / (1 - ab[i]) * b_[i]
        var = b_[i] if variance == "beta" else bt
        A, C = affine_mu(i)
        diff_mean, diff_var = (c0 + (c1 - A) * a) * x0 - C, (c1 - A) ** 2 * b * b
        total += (diff_mean ** 2 + diff_var) / (2 * var) + 0.5 * (bt / var - 1 - np.log(bt / var))
    total += 0.5 * (ab[-1] * x0 ** 2 + (1 - ab[-1]) - 1 - np.log(1 - ab[-1]))  # prior
    A, C = affine_mu(0)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    x1 = np.sqrt(ab[0]) * x0[:, None] + np.sqrt(1 - ab[0]) * z[None]
    logp = discretized_gaussian_log_likelihood(torch.from_numpy(x0[:, None]), torch.from_numpy(A * x1 + C),
                                               torch.tensor(math.sqrt(b_[0]))).numpy()
    total += -(logp * w / w.sum()).sum(1)
    return float((P * total).sum() / math.log(2))


def test_bits_per_dim_known_case():
    """1-D N(0.1, 0.5^2) on 256 bins, exact eps-denoiser, linear T = 1000, decoder std sqrt(beta_1).

    The expectation over x0 is exact (every bin centre, weighted by its probability); over x_t it is
    the calc_bpd_loop estimate, 48 draws per bin, so the Monte Carlo standard error is ~0.02 bits.
    """
    m, s, reps = 0.1, 0.5, 48
    process = VPProcess(make_betas("linear", 1000))
    P = _bin_probs(m, s)
    entropy = -(P * P.log2()).sum().item()
    assert entropy == pytest.approx(7.734, abs=5e-4)
    x0 = CENTRES.repeat(reps)[:, None]  # (256 reps, 1)
    weights = P.repeat(reps) / reps
    g = torch.Generator().manual_seed(0)
    reference = {"beta": 7.93, "beta_tilde": 8.57}
    for variance, ref in reference.items():
        terms = elbo_terms(_exact_eps(process, m, s), process, x0, variance=variance, max_batch=1 << 16, generator=g)
        assert terms["kl"].shape == (256 * reps, 999) and terms["prior"].shape == (256 * reps,)
        bits = bits_per_dim(terms["total"], 1)
        elbo = (weights * bits).sum().item()
        per_bin = bits.reshape(reps, 256)
        se = math.sqrt((P ** 2 * per_bin.var(0) / reps).sum().item())
        assert elbo >= entropy
        assert abs(elbo - ref) < 0.05, (variance, elbo)
        analytic = _analytic_elbo_bits(process, m, s, variance)
        assert abs(elbo - analytic) < 4 * se, (variance, elbo, analytic, se)
        # Breakdown: the prior is negligible (alpha_bar_T ~ 4e-5), the decoder about 2.33 bits.
        assert (weights * bits_per_dim(terms["prior"], 1)).sum().item() < 1e-4
        assert (weights * bits_per_dim(terms["decoder"], 1)).sum().item() == pytest.approx(2.33, abs=0.05)
