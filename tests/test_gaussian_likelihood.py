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


@pytest.mark.parametrize("m1,v1,m2,v2", [(0.3, 0.5, -0.2, 2.0), (0.0, 1.0, 0.0, 1.0), (1.5, 0.01, -2.0, 0.3),
                                         (-0.7, 4.0, 0.1, 0.05), (2.0, 1e-4, 2.0, 1e-4 * 1.01)])
def test_normal_kl_against_its_integral(m1, v1, m2, v2):
    """KL(q || p) = E_q[log q - log p], integrated by Gauss-Hermite quadrature (exact: the integrand is
    quadratic in x), and the textbook form log(s2/s1) + (s1^2 + (m1 - m2)^2)/(2 s2^2) - 1/2."""
    z, w = np.polynomial.hermite_e.hermegauss(8)  # nodes and weights for the standard normal
    x = m1 + math.sqrt(v1) * z

    def log_normal(x, m, v):
        return -0.5 * (x - m) ** 2 / v - 0.5 * np.log(2 * math.pi * v)

    integral = float((w * (log_normal(x, m1, v1) - log_normal(x, m2, v2))).sum() / w.sum())
    s1, s2 = math.sqrt(v1), math.sqrt(v2)
    textbook = math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
    kl = normal_kl(*(torch.tensor(v, dtype=f64) for v in (m1, v1, m2, v2))).item()
    assert kl == pytest.approx(integral, rel=1e-10, abs=1e-12)
    assert kl == pytest.approx(textbook, rel=1e-12, abs=1e-14)
    assert kl >= 0 and (kl == 0) == (m1 == m2 and v1 == v2)


def _exact_eps(process, m, s):
    def denoiser(x_t, t):
        a = process.gather(process.alpha_bars.sqrt(), t, x_t)
        b = process.gather((1 - process.alpha_bars).sqrt(), t, x_t)
        x0_hat = m + a * s * s / (a * a * s * s + b * b) * (x_t - a * m)
        return (x_t - a * x0_hat) / b

    return denoiser


def _analytic_elbo_bits(process: VPProcess, m: float, s: float, variance: str) -> dict[str, float]:
    """The same bound computed independently, per term, in bits: the exact denoiser is affine in
    x_t, so every E_{x_t} KL is closed form; the decoder expectation over x_1 uses Gauss-Hermite
    quadrature; the prior is closed form."""
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

    kl = np.zeros_like(x0)
    for i in range(1, len(b_)):
        a, b = np.sqrt(ab[i]), np.sqrt(1 - ab[i])
        c0, c1 = np.sqrt(abp[i]) * b_[i] / (1 - ab[i]), np.sqrt(al[i]) * (1 - abp[i]) / (1 - ab[i])
        bt = (1 - abp[i]) / (1 - ab[i]) * b_[i]
        var = b_[i] if variance == "beta" else bt
        A, C = affine_mu(i)
        diff_mean, diff_var = (c0 + (c1 - A) * a) * x0 - C, (c1 - A) ** 2 * b * b
        kl += (diff_mean ** 2 + diff_var) / (2 * var) + 0.5 * (bt / var - 1 - np.log(bt / var))
    prior = 0.5 * (ab[-1] * x0 ** 2 + (1 - ab[-1]) - 1 - np.log(1 - ab[-1]))
    A, C = affine_mu(0)
    z, w = np.polynomial.hermite_e.hermegauss(80)
    x1 = np.sqrt(ab[0]) * x0[:, None] + np.sqrt(1 - ab[0]) * z[None]
    logp = discretized_gaussian_log_likelihood(torch.from_numpy(x0[:, None]), torch.from_numpy(A * x1 + C),
                                               torch.tensor(math.sqrt(b_[0]))).numpy()
    decoder = -(logp * w / w.sum()).sum(1)
    out = {k: float((P * v).sum() / math.log(2)) for k, v in (("prior", prior), ("kl", kl), ("decoder", decoder))}
    out["total"] = out["prior"] + out["kl"] + out["decoder"]
    return out


def _entropy_bits_by_integration(m: float, s: float) -> float:
    """Entropy of the 8-bit discretisation of N(m, s^2), independently of _bin_probs: the two open edge
    bins exactly, the 254 inner bins (width w) as -int p log2(p w) dx, whose error is O(w^2/s^2) ~ 1e-5."""
    from scipy import integrate, stats

    w = 2 / 255
    lo, hi = -1 + w / 2, 1 - w / 2
    p_lo, p_hi = stats.norm.cdf(lo, m, s), stats.norm.sf(hi, m, s)
    inner, _ = integrate.quad(lambda x: -stats.norm.pdf(x, m, s) * math.log2(stats.norm.pdf(x, m, s) * w), lo, hi,
                              epsabs=1e-10, limit=200)
    return inner - p_lo * math.log2(p_lo) - p_hi * math.log2(p_hi)


def test_bits_per_dim_known_case():
    """1-D N(0.1, 0.5^2) on 256 bins, exact eps-denoiser, linear T = 1000, decoder std sqrt(beta_1).

    The expectation over x0 is exact (every bin centre, weighted by its probability); over x_t it is
    the calc_bpd_loop estimate, 48 draws per bin, so the Monte Carlo standard error is ~0.02 bits.
    Each term is compared with its independent computation (_analytic_elbo_bits) within 4 standard
    errors of its own estimate; the prior, with no x_t to draw, to rounding.
    """
    m, s, reps = 0.1, 0.5, 48
    process = VPProcess(make_betas("linear", 1000))
    P = _bin_probs(m, s)
    entropy = -(P * P.log2()).sum().item()
    assert entropy == pytest.approx(_entropy_bits_by_integration(m, s), abs=1e-4)
    x0 = CENTRES.repeat(reps)[:, None]  # (256 reps, 1)
    weights = P.repeat(reps) / reps
    g = torch.Generator().manual_seed(0)

    def estimate(per_example: torch.Tensor) -> tuple[float, float]:
        """(weighted mean, its standard error) of a per-example quantity in bits."""
        bits = bits_per_dim(per_example, 1)
        se = math.sqrt((P ** 2 * bits.reshape(reps, 256).var(0) / reps).sum().item())
        return (weights * bits).sum().item(), se

    for variance in ("beta", "beta_tilde"):
        terms = elbo_terms(_exact_eps(process, m, s), process, x0, variance=variance, max_batch=1 << 16, generator=g)
        assert terms["kl"].shape == (256 * reps, 999) and terms["prior"].shape == (256 * reps,)
        analytic = _analytic_elbo_bits(process, m, s, variance)
        elbo, se = estimate(terms["total"])
        assert elbo >= entropy
        assert abs(elbo - analytic["total"]) < 4 * se, (variance, elbo, analytic, se)
        for name, per_example in (("kl", terms["kl"].sum(1)), ("decoder", terms["decoder"])):
            value, se_term = estimate(per_example)
            assert abs(value - analytic[name]) < 4 * se_term, (variance, name, value, analytic[name], se_term)
        prior, _ = estimate(terms["prior"])
        assert prior == pytest.approx(analytic["prior"], rel=1e-9)
