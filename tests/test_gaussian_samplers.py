"""Samplers against the exact denoiser of Gaussian data N(m, s^2 I): moments, determinism, order, NFE.

Every test taking the `process` fixture runs on the linear and on the cosine schedule (T = 1000).
"""

from __future__ import annotations

import math

import pytest
import torch

from zoo.gaussian import samplers
from zoo.gaussian.model import guided
from zoo.gaussian.process import VPProcess, strided_timesteps
from zoo.gaussian.schedules import make_betas

f64 = torch.float64


M, S = 0.3, 0.5


def exact_eps(process: VPProcess, m, s: float = S):
    """E[eps | x_t] for x0 ~ N(m, s^2 I): x0_hat = m + a s^2/(a^2 s^2 + b^2) (x_t - a m), eps = (x_t - a x0_hat)/b.

    `m` is a float or a function of the batch size giving per-example means (B, 1).
    """

    def denoiser(x_t, t):
        a = process.gather(process.alpha_bars.sqrt(), t, x_t)
        b = process.gather((1 - process.alpha_bars).sqrt(), t, x_t)
        mean = m if isinstance(m, float) else m(x_t)
        x0_hat = mean + a * s * s / (a * a * s * s + b * b) * (x_t - a * mean)
        return (x_t - a * x0_hat) / b

    return denoiser


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request):
    return request.param


@pytest.fixture(scope="module")
def process(schedule):
    return VPProcess(make_betas(schedule, 1000))


CASES = {
    "ddpm-beta_tilde": lambda d, p, x, g: samplers.ddpm(d, p, x, variance="beta_tilde", generator=g),
    "ddpm-beta": lambda d, p, x, g: samplers.ddpm(d, p, x, variance="beta", generator=g),
    "ddim-1000": lambda d, p, x, g: samplers.ddim(d, p, x, 1000),
    "ddim-1000-eta1": lambda d, p, x, g: samplers.ddim(d, p, x, 1000, eta=1.0, generator=g),
    "ddim-200-eta0.5": lambda d, p, x, g: samplers.ddim(d, p, x, 200, eta=0.5, generator=g),
    "ode-euler-1000": lambda d, p, x, g: samplers.ode(d, p, x, 1000, method="euler"),
    "ode-heun-50": lambda d, p, x, g: samplers.ode(d, p, x, 50, method="heun"),
}


@pytest.mark.parametrize("name", CASES)
def test_samplers_reproduce_gaussian_data(process, name):
    n, d = 5000, 4  # N = 20000 scalars
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(n, d, dtype=f64, generator=g)
    x0 = CASES[name](exact_eps(process, M), process, x_T, g)
    N = x0.numel()
    # 5 standard errors: of the mean s/sqrt(N), of the std s/sqrt(2N) (Gaussian samples).
    assert abs(x0.mean().item() - M) < 5 * S / math.sqrt(N)
    assert abs(x0.std().item() - S) < 5 * S / math.sqrt(2 * N)


def test_ddim_eta0_is_deterministic_and_equals_euler(process):
    den = exact_eps(process, M)
    x_T = torch.randn(200, 3, dtype=f64)
    a = samplers.ddim(den, process, x_T, 50, generator=torch.Generator().manual_seed(0))
    b = samplers.ddim(den, process, x_T, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # DDIM with eta = 0 is Euler's method on the ODE dy/dsigma = eps with y = x/sqrt(alpha_bar).
    torch.testing.assert_close(samplers.ode(den, process, x_T, 50, method="euler"), a, rtol=1e-10, atol=1e-10)


def test_ddim_eta1_all_steps_is_ddpm_beta_tilde(process):
    den = exact_eps(process, M)
    x_T = torch.randn(100, 2, dtype=f64)
    a = samplers.ddim(den, process, x_T, 1000, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = samplers.ddpm(den, process, x_T, variance="beta_tilde", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_heun_is_second_order_and_euler_first(process, schedule):
    """Against the 1000-step solution. Grids that start from T: 'leading' only when S divides T (it
    starts at T - T/S + 1, which on the cosine schedule, whose alpha_bar moves fast near T, adds a
    first-order error of its own), 'linspace' for any S."""
    den = exact_eps(process, M)
    x_T = torch.linspace(-3, 3, 61, dtype=f64)[:, None]
    fine = samplers.ode(den, process, x_T, 1000, method="heun")
    # The exact flow of Gaussian data keeps the z-score: x0 = m + s (x_T - a_T m)/sqrt(a_T^2 s^2 + b_T^2).
    aT, bT2 = process.alpha_bars[-1].sqrt(), 1 - process.alpha_bars[-1]
    assert (fine - (M + S * (x_T - aT * M) / (aT ** 2 * S ** 2 + bT2).sqrt())).abs().max() < 1e-3
    spacing, counts = {"linear": ("leading", (25, 50, 100)), "cosine": ("linspace", (20, 40, 80))}[schedule]
    err = {meth: [(samplers.ode(den, process, x_T, n, method=meth, spacing=spacing) - fine).abs().max().item()
                  for n in counts] for meth in ("euler", "heun")}
    for meth, order in (("euler", 1), ("heun", 2)):
        ratios = [err[meth][i] / err[meth][i + 1] for i in range(2)]
        assert all(abs(math.log2(r) - order) < 0.25 for r in ratios), (meth, ratios)


def test_counting_denoiser_and_callback(process):
    x_T = torch.randn(4, 2, dtype=f64)
    expected = {"ddpm": 1000, "ddim": 25, "euler": 25, "heun": 48}
    runs = {"ddpm": lambda d, cb: samplers.ddpm(d, process, x_T, callback=cb),
            "ddim": lambda d, cb: samplers.ddim(d, process, x_T, 25, callback=cb),
            "euler": lambda d, cb: samplers.ode(d, process, x_T, 25, method="euler", callback=cb),
            "heun": lambda d, cb: samplers.ode(d, process, x_T, 25, method="heun", callback=cb)}
    for name, run in runs.items():
        counting, seen = samplers.CountingDenoiser(exact_eps(process, M)), []
        out = run(counting, seen.append)
        assert counting.nfe == expected[name], name
        assert seen[0]["t"] == (1000 if name == "ddpm" else 961) and seen[-1]["t"] == 1  # stride 40
        assert torch.equal(seen[-1]["x"], out)
        assert all(set(info) >= {"t", "x", "x0_hat"} for info in seen)
    with pytest.raises(ValueError, match="choose from euler, heun"):
        samplers.ode(exact_eps(process, M), process, x_T, 10, method="rk4")
    with pytest.raises(ValueError, match="choose from beta, beta_tilde"):
        samplers.ddpm(exact_eps(process, M), process, x_T, variance="learned")


def test_guidance_formula_and_every_sampler():
    """Exact class-conditional denoisers: class y is N(m_y, s^2), the null class N(0, s^2).

    On the linear schedule only: guidance acts on the denoiser, the schedule is covered above.

    eps is affine in m, so guidance with weight w samples N(w m_y, s^2) exactly.
    """
    means = torch.tensor([-0.5, 0.5, 0.0], dtype=f64)  # classes 0, 1 and the null class 2
    y_of = {}

    def eps_fn(x_t, t, y):
        y_of["last"] = y
        return exact_eps(process, lambda x: means[y][:, None])(x_t, t)

    process = VPProcess(make_betas("linear", 1000))
    labels = torch.tensor([0, 1]).repeat(2000)  # (4000,)
    x = torch.randn(4000, 1, dtype=f64)
    t = torch.full((4000,), 500)
    for w in (0.0, 1.0, 2.5):
        out = guided(eps_fn, labels, w, null=2)(x, t)
        null_eps = eps_fn(x, t, torch.full_like(labels, 2))
        cond_eps = eps_fn(x, t, labels)
        torch.testing.assert_close(out, (1 - w) * null_eps + w * cond_eps)
    w = 2.0
    g = torch.Generator().manual_seed(0)
    den = guided(eps_fn, labels, w, null=2)
    for name, run in CASES.items():
        x0 = run(den, process, torch.randn(4000, 1, dtype=f64, generator=g), g)
        for c in (0, 1):
            sel = x0[labels == c]
            assert abs(sel.mean().item() - w * means[c].item()) < 5 * S / math.sqrt(len(sel)), name
            assert abs(sel.std().item() - S) < 5 * S / math.sqrt(2 * len(sel)), name


def test_ddim_few_steps_is_the_affine_map_computed_by_hand(process):
    """DDIM (eta = 0) with the exact denoiser is an affine map of x_T, its slope the product over the
    grid of d x_prev / d x = a' k + b' (1 - a k)/b, k = a s^2/(a^2 s^2 + b^2) (x0_hat = m + k (x - a m)),
    computed here from alpha_bar. It under-disperses, and converges to the exact flow's slope
    s/sqrt(a_T^2 s^2 + b_T^2) at first order (Euler's method).
    """
    den = exact_eps(process, M)
    g = torch.Generator().manual_seed(4)
    x0 = samplers.ddim(den, process, torch.randn(20000, 1, dtype=f64, generator=g), 50)
    assert abs(x0.mean().item() - M) < 5 * S / math.sqrt(x0.numel())
    ab_all = process.alpha_bars.tolist()
    aT, bT2 = math.sqrt(ab_all[-1]), 1 - ab_all[-1]
    limit = S / math.sqrt(aT ** 2 * S ** 2 + bT2)
    pair = torch.tensor([[0.0], [1.0]], dtype=f64)
    bias = {}
    for steps in (50, 100, 200):
        grid = strided_timesteps(process.T, steps).tolist()[::-1] + [0]  # 1000 divisible: the leading grid
        slope = 1.0
        for t, t_prev in zip(grid[:-1], grid[1:]):
            ab, ab_prev = ab_all[t - 1], (ab_all[t_prev - 1] if t_prev else 1.0)
            a, b, a_prev, b_prev = math.sqrt(ab), math.sqrt(1 - ab), math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
            k = a * S * S / (a * a * S * S + b * b)
            slope *= a_prev * k + b_prev * (1 - a * k) / b
        out = samplers.ddim(den, process, pair, steps)
        assert (out[1] - out[0]).item() == pytest.approx(slope, rel=1e-12)
        bias[steps] = limit - slope
    assert bias[50] > 0
    assert 1.8 < bias[50] / bias[100] < 2.2 and 1.8 < bias[100] / bias[200] < 2.2, bias


def test_ddim_eta1_is_ddpm_on_the_respaced_process(process):
    """Respacing rebuilds betas from alpha_bar, so DDPM (beta_tilde) runs unchanged on 50 strided steps."""
    den = exact_eps(process, M)
    x_T = torch.randn(100, 2, dtype=f64)
    spaced = process.respace(strided_timesteps(process.T, 50))
    a = samplers.ddim(den, process, x_T, 50, eta=1.0, generator=torch.Generator().manual_seed(2))
    b = samplers.ddpm(den, spaced, x_T, variance="beta_tilde", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
