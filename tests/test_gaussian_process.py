"""Gaussian VP process: schedules, alpha_bar, posterior against Bayes' rule, exact conversions, respacing."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.gaussian.process import VPProcess, strided_timesteps
from zoo.gaussian.schedules import make_betas

f64 = torch.float64


def test_schedules_against_their_formulas():
    T = 30
    lin = make_betas("linear", T, beta_1=1e-4, beta_T=0.02)
    assert lin.dtype == f64 and lin.shape == (T,)
    for i in range(T):
        assert lin[i].item() == pytest.approx(1e-4 + (0.02 - 1e-4) * i / (T - 1), rel=1e-12)
    quad = make_betas("quadratic", T, beta_1=1e-4, beta_T=0.02)
    for i in range(T):
        assert quad[i].item() == pytest.approx((0.01 + (math.sqrt(0.02) - 0.01) * i / (T - 1)) ** 2, rel=1e-12)
    sig = make_betas("sigmoid", T, beta_1=1e-4, beta_T=0.02)
    for i in range(T):
        z = -6 + 12 * i / (T - 1)
        assert sig[i].item() == pytest.approx(1e-4 + (0.02 - 1e-4) / (1 + math.exp(-z)), rel=1e-12)
    cos = make_betas("cosine", T, s=0.008)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = VPProcess(cos).alpha_bars
    for t in range(1, T + 1):
        beta = min(1 - f(t) / f(t - 1), 0.999)
        assert cos[t - 1].item() == pytest.approx(beta, rel=1e-12)
        if t < T:  # the last beta is clipped at 0.999
            assert ab[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-10)
    with pytest.raises(ValueError, match="choose from linear, quadratic, sigmoid, cosine"):
        make_betas("cubic", T)


def test_alpha_bar_is_the_cumulative_product():
    betas = make_betas("linear", 200)
    p = VPProcess(betas)
    assert p.T == 200 and all(a.dtype == f64 for a in (p.betas, p.alphas, p.alpha_bars))
    running = 1.0
    for t in range(1, 201):
        running *= 1 - betas[t - 1].item()
        assert p.alpha_bars[t - 1].item() == pytest.approx(running, rel=1e-13)
    assert p.alpha_bars_prev[0] == 1 and torch.equal(p.alpha_bars_prev[1:], p.alpha_bars[:-1])


def test_q_sample_and_coefficient_dtype():
    p = VPProcess(make_betas("cosine", 100))
    x0, eps = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([1, 10, 50, 99, 100])
    x_t = p.q_sample(x0, t, eps)
    assert x_t.dtype == torch.float32
    ab = p.alpha_bars[t - 1].float().view(5, 1, 1, 1)
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


def test_posterior_against_bayes_rule():
    """Condition the joint Gaussian of (x_{t-1}, x_t) given x0, built from the two forward steps."""
    p = VPProcess(make_betas("linear", 50, beta_1=1e-3, beta_T=0.2))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(50, 3, dtype=f64, generator=g)
    x_t = torch.randn(50, 3, dtype=f64, generator=g)
    t = torch.arange(1, 51)
    mu, var = p.posterior(x0, x_t, t)
    for i, step in enumerate(t.tolist()):
        ab_prev = 1.0 if step == 1 else float(torch.prod(1 - p.betas[: step - 1]))
        beta = float(p.betas[step - 1])
        # x_{t-1} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) z1;  x_t = sqrt(1 - beta) x_{t-1} + sqrt(beta) z2.
        m1, v11 = math.sqrt(ab_prev) * x0[i], 1 - ab_prev
        m2 = math.sqrt(1 - beta) * m1
        v12 = math.sqrt(1 - beta) * v11
        v22 = (1 - beta) * v11 + beta
        torch.testing.assert_close(mu[i], m1 + v12 / v22 * (x_t[i] - m2), rtol=1e-12, atol=1e-12)
        assert var[i].item() == pytest.approx(v11 - v12 ** 2 / v22, rel=1e-10, abs=1e-15)
    assert var[0].item() == 0  # t = 1: x0 is known exactly


def test_posterior_noise_form():
    p = VPProcess(make_betas("cosine", 100))
    x0, eps = torch.randn(8, 2, dtype=f64), torch.randn(8, 2, dtype=f64)
    t = torch.randint(1, 101, (8,))
    x_t = p.q_sample(x0, t, eps)
    mu, _ = p.posterior(x0, x_t, t)
    torch.testing.assert_close(p.mean_from_eps(eps, x_t, t), mu, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("src", ["eps", "x0", "v"])
def test_conversions_round_trip_exactly(src):
    p = VPProcess(make_betas("cosine", 1000))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(64, 3, dtype=f64, generator=g), torch.randn(64, 3, dtype=f64, generator=g)
    t = torch.randint(1, 1000, (64,), generator=g)
    x_t = p.q_sample(x0, t, eps)
    a, b = p.alpha_bars[t - 1].sqrt()[:, None], (1 - p.alpha_bars[t - 1]).sqrt()[:, None]
    truth = {"eps": eps, "x0": x0, "v": a * eps - b * x0}
    for dst in ("eps", "x0", "v"):
        torch.testing.assert_close(p.convert(truth[src], x_t, t, src, dst), truth[dst], rtol=1e-9, atol=1e-9)
        back = p.convert(p.convert(truth[src], x_t, t, src, dst), x_t, t, dst, src)
        torch.testing.assert_close(back, truth[src], rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="choose from eps, x0, v"):
        p.convert(eps, x_t, t, src, "score")


def test_mean_parameterisation_inverse():
    p = VPProcess(make_betas("linear", 1000))
    eps, x_t = torch.randn(16, 4, dtype=f64), torch.randn(16, 4, dtype=f64)
    t = torch.randint(1, 1001, (16,))
    mu = p.mean_from_eps(eps, x_t, t)
    torch.testing.assert_close(p.eps_from_mean(mu, x_t, t), eps, rtol=1e-10, atol=1e-10)
    # eps = (x_t - sqrt(alpha_t) mu) sqrt(1 - alpha_bar_t)/beta_t, written out.
    k = ((1 - p.alpha_bars[t - 1]).sqrt() / p.betas[t - 1])[:, None]
    torch.testing.assert_close(p.eps_from_mean(mu, x_t, t), (x_t - p.alphas[t - 1].sqrt()[:, None] * mu) * k)


def test_respacing_keeps_alpha_bar_and_maps_steps():
    p = VPProcess(make_betas("linear", 1000))
    tau = strided_timesteps(1000, 50)
    assert torch.equal(tau, torch.arange(1, 1001, 20))  # improved-diffusion's "ddim50"
    assert torch.equal(strided_timesteps(10, 4), torch.tensor([1, 3, 6, 8]))
    q = p.respace(tau)
    assert q.T == 50
    torch.testing.assert_close(q.alpha_bars, p.alpha_bars[tau - 1], rtol=1e-12, atol=0)
    assert torch.equal(q.model_t(torch.tensor([1, 50])), torch.tensor([1, 981]))
    # A respaced process of a respaced process maps to the original steps.
    r = q.respace(torch.tensor([1, 25, 50]))
    assert torch.equal(r.timesteps, tau[[0, 24, 49]])
    full = p.respace(strided_timesteps(1000, 1000))
    torch.testing.assert_close(full.betas, p.betas, rtol=1e-9, atol=0)
    with pytest.raises(ValueError):
        p.respace(torch.tensor([5, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_one_int_step_gives_the_tensor_coefficients(dtype):
    """An int t (what the samplers pass) gives, as a Python float, exactly the value the (B,) tensor path
    gathers in x's dtype, for every table; so the samplers' numbers do not depend on which is used."""
    p = VPProcess(make_betas("cosine", 30)).respace([1, 4, 9, 16, 25, 30])
    x = torch.zeros(3, 1, 2, 2, dtype=dtype)
    for name in p.tables:
        if name == "timesteps":
            continue
        for t in range(1, p.T + 1):
            gathered = p.coef(name, torch.full((3,), t), x)
            assert gathered.dtype == dtype and gathered.shape == (3, 1, 1, 1)
            value = p.coef(name, t, x)
            assert isinstance(value, float) and torch.equal(gathered, torch.full_like(gathered, value)), (name, t)
    assert [p.model_t(t) for t in range(1, p.T + 1)] == p.model_t(torch.arange(1, p.T + 1)).tolist() \
        == [1, 4, 9, 16, 25, 30]
    for bad in (0, p.T + 1):
        with pytest.raises(IndexError, match="outside 1..6"):
            p.coef("betas", bad, x)
        with pytest.raises(IndexError):
            p.model_t(bad)
