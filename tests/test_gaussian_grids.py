"""Step grids (leading / trailing / linspace) and zero terminal SNR (SPEC 11), with the samplers on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.test_gaussian_samplers import exact_eps
from zoo import ZooError
from zoo.gaussian import samplers
from zoo.gaussian.process import VPProcess, ZeroSNRError, strided_timesteps
from zoo.gaussian.schedules import ScheduleError, make_betas, rescale_betas_zero_snr, step_grid

f64 = torch.float64
M, S = 0.3, 0.5

# Written out by hand from SPEC 11 (i = 0..S-1):
#   leading t_i = 1 + i floor(T/S); trailing t_i = round(T - i T/S); linspace t_i = 1 + round(i (T-1)/(S-1)).
HAND = {
    # T = 1000, S = 10: stride 100; 1000 - 100 i; 1 + round(111 i).
    (1000, 10, "leading"): [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    (1000, 10, "trailing"): [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
    (1000, 10, "linspace"): [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
    # T = 10, S = 3: floor(10/3) = 3; 10, 6.67 -> 7, 3.33 -> 3; 1 + round(0, 4.5, 9) with 4.5 -> 4 (half to even).
    (10, 3, "leading"): [1, 4, 7],
    (10, 3, "trailing"): [3, 7, 10],
    (10, 3, "linspace"): [1, 5, 10],
    # T = 7, S = 3: floor(7/3) = 2; 7, 4.67 -> 5, 2.33 -> 2; 1 + (0, 3, 6).
    (7, 3, "leading"): [1, 3, 5],
    (7, 3, "trailing"): [2, 5, 7],
    (7, 3, "linspace"): [1, 4, 7],
    # T = 7, S = 6, trailing: 7, 5.83, 4.67, 3.5, 2.33, 1.17. The tie 3.5 comes out as 3, as in diffusers:
    # np.arange(7, 0, -7/6) computes 7 + 3 delta with delta = (7 - 7/6) - 7 in float64, just below -7/6.
    (7, 6, "trailing"): [1, 2, 3, 5, 6, 7],
}


@pytest.mark.parametrize("key", HAND, ids=lambda k: f"T{k[0]}-S{k[1]}-{k[2]}")
def test_step_grid_against_hand_computed_grids(key):
    T, S_, spacing = key
    grid = step_grid(T, S_, spacing)
    assert grid.dtype == torch.long
    assert grid.tolist() == HAND[key]


def test_step_grid_invariants_and_the_old_strided_grid():
    for T in range(1, 61):
        for n in range(1, T + 1):
            for spacing in ("leading", "trailing", "linspace"):
                g = step_grid(T, n, spacing).tolist()
                assert len(g) == n and g == sorted(set(g)) and 1 <= g[0] and g[-1] <= T, (T, n, spacing, g)
            assert step_grid(T, n, "trailing")[-1] == T
            assert step_grid(T, n, "linspace")[0] == 1
            assert step_grid(T, n, "linspace")[-1] == (T if n > 1 else 1)  # np.linspace(0, T - 1, 1) = [0]
            assert step_grid(T, n, "leading")[0] == 1
            if T % n == 0:  # leading is the old strided grid 1 + floor(i T/S) when S divides T
                assert torch.equal(step_grid(T, n, "leading"), strided_timesteps(T, n)), (T, n)
    # When S does not divide T the stride stays floor(T/S) and the remainder is left above the top step.
    assert strided_timesteps(10, 4).tolist() == [1, 3, 6, 8] and step_grid(10, 4).tolist() == [1, 3, 5, 7]
    assert step_grid(1000, 80)[-1] == 1 + 79 * 12  # 949: sampling starts well below T


def test_step_grid_validation():
    with pytest.raises(ScheduleError, match="unknown spacing 'even'; choose from leading, trailing, linspace"):
        step_grid(10, 3, "even")
    with pytest.raises(ZooError, match=r"steps must be in 1..10, got 11"):
        step_grid(10, 11)
    with pytest.raises(ValueError, match=r"steps must be in 1..10, got 0"):  # ScheduleError is a ValueError
        step_grid(10, 0)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_zero_terminal_snr_rescaling(schedule):
    """Lin et al. (2024) Alg. 1 checked against the map it defines, computed here with numpy."""
    T = 1000
    betas = make_betas(schedule, T)
    new = rescale_betas_zero_snr(betas)
    assert new.dtype == f64 and new.shape == (T,)
    assert bool(((new >= 0) & (new <= 1)).all()) and new[-1].item() == 1.0
    a_old = np.sqrt(np.cumprod(1 - betas.numpy()))
    a_new = VPProcess(new).alpha_bars.sqrt().numpy()
    assert VPProcess(new).alpha_bars[-1].item() == 0.0  # exactly: beta_T = 1
    assert a_new[0] == pytest.approx(a_old[0], rel=1e-14)  # alpha_bar_1 unchanged
    # sqrt(alpha_bar) is the affine map sending a_1 -> a_1 and a_T -> 0, applied to every step.
    expected = (a_old - a_old[-1]) * a_old[0] / (a_old[0] - a_old[-1])
    np.testing.assert_allclose(a_new, expected, rtol=1e-10, atol=1e-15)
    # ... which keeps the SNR decreasing: every new beta in (0, 1) before the last.
    assert bool(((new[:-1] > 0) & (new[:-1] < 1)).all())
    with pytest.raises(ScheduleError, match="T >= 2"):
        rescale_betas_zero_snr(torch.tensor([0.5], dtype=f64))


@pytest.fixture(scope="module")
def zsnr():
    return VPProcess(rescale_betas_zero_snr(make_betas("linear", 1000)))


def exact_pred(process: VPProcess, kind: str, m: float = M, s: float = S):
    """The exact prediction of Gaussian data N(m, s^2) of kind x0 or v: defined at alpha_bar = 0 too."""

    def denoiser(x_t, t):
        a = process.gather(process.alpha_bars.sqrt(), t, x_t)
        b = process.gather((1 - process.alpha_bars).sqrt(), t, x_t)
        x0_hat = m + a * s * s / (a * a * s * s + b * b) * (x_t - a * m)  # = m where a = 0
        eps_hat = (x_t - a * x0_hat) / b
        return x0_hat if kind == "x0" else a * eps_hat - b * x0_hat

    return denoiser


def test_zero_snr_process_at_t_T(zsnr):
    """At t = T: x_T = eps, x0 = -v, the reverse mean is sqrt(alpha_bar_{T-1}) x0_hat, eps cannot be inverted."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, dtype=f64, generator=g), torch.randn(6, 3, dtype=f64, generator=g)
    t = torch.full((6,), 1000)
    x_t = zsnr.q_sample(x0, t, eps)
    assert torch.equal(x_t, eps)
    v = -x0  # v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 with alpha_bar = 0
    for kind, out in (("v", v), ("x0", x0)):
        x0_hat, eps_hat = zsnr.split(out, x_t, t, kind)
        assert torch.equal(x0_hat, x0) and torch.equal(eps_hat, eps)
        mu = zsnr.reverse_mean(out, x_t, t, kind)
        torch.testing.assert_close(mu, zsnr.alpha_bars[-2].sqrt() * x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(zsnr.convert(v, x_t, t, "v", "x0"), x0)
    for call in (lambda: zsnr.split(eps, x_t, t, "eps"), lambda: zsnr.convert(eps, x_t, t, "eps", "v"),
                 lambda: zsnr.mean_from_eps(eps, x_t, t)):
        with pytest.raises(ZeroSNRError, match="choose from x0, v"):
            call()
    # Below T, eps is as good as ever.
    t2 = torch.full((6,), 999)
    x2 = zsnr.q_sample(x0, t2, eps)
    torch.testing.assert_close(zsnr.split(eps, x2, t2, "eps")[0], x0, rtol=1e-6, atol=1e-6)
    # The posterior variance at T is finite: (1 - alpha_bar_{T-1}) beta_T with beta_T = 1.
    assert zsnr.beta_tildes[-1].item() == pytest.approx(1 - zsnr.alpha_bars[-2].item(), rel=1e-12)


def _affine_moments(process: VPProcess, grid: list[int], kind: str, eta: float = 0.0) -> tuple[float, float]:
    """Mean and std of a sampler's output from x_T ~ N(0, 1) with the exact denoiser of N(M, S^2), by hand.

    The exact x0_hat = M + k (x - a M), k = a S^2/(a^2 S^2 + b^2), is affine in x, so each step is
    x' = A x + C + sig z and the moments follow E' = A E + C, Var' = A^2 Var + sig^2 exactly:
    'ddim' is Song et al. eq. 12 on `grid`, 'ddpm' is Ho et al.'s step with beta_tilde, the
    posterior mean mu_tilde(x0_hat, x).
    """
    ab_all = np.cumprod(1 - process.betas.numpy())
    E, V = 0.0, 1.0
    steps = sorted(grid, reverse=True)
    for i, t in enumerate(steps):
        ab = ab_all[t - 1]
        ab_prev = ab_all[steps[i + 1] - 1] if i + 1 < len(steps) else 1.0
        a, b, a_prev = math.sqrt(ab), math.sqrt(1 - ab), math.sqrt(ab_prev)
        k = a * S * S / (a * a * S * S + b * b)
        x0_of = lambda x: M + k * (x - a * M)  # noqa: E731  (affine: apply to E, slope k)
        if kind == "ddim":
            sig = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
            d = math.sqrt(max(1 - ab_prev - sig * sig, 0.0))
            step = lambda x: a_prev * x0_of(x) + d * (x - a * x0_of(x)) / b  # noqa: E731
        else:
            beta = 1 - ab / ab_prev
            c0, c1 = a_prev * beta / (1 - ab), math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
            sig = math.sqrt((1 - ab_prev) / (1 - ab) * beta) if i + 1 < len(steps) else 0.0
            step = lambda x: c0 * x0_of(x) + c1 * x  # noqa: E731
        A = step(1.0) - step(0.0)
        E, V = step(E), A * A * V + sig * sig
    return E, math.sqrt(V)


ZSNR_CASES = {  # name: (run, grid, kind of recursion, eta)
    "ddpm": (lambda d, p, x, g, k: samplers.ddpm(d, p, x, generator=g, prediction=k), "all", "ddpm", 0.0),
    "ddim-200-eta1": (lambda d, p, x, g, k: samplers.ddim(d, p, x, 200, eta=1.0, generator=g, prediction=k),
                      "all", "ddim", 1.0),
    "ddim-trailing-20-eta0.5": (lambda d, p, x, g, k: samplers.ddim(d, p, x, 20, eta=0.5, generator=g,
                                                                   spacing="trailing", prediction=k),
                                "trailing", "ddim", 0.5),
    "ddim-linspace-10": (lambda d, p, x, g, k: samplers.ddim(d, p, x, 10, spacing="linspace", prediction=k),
                         "linspace", "ddim", 0.0),
}


@pytest.mark.parametrize("name", ZSNR_CASES)
def test_samplers_start_at_zero_snr(name):
    """Every grid through t = T with alpha_bar_T = 0: finite, x0 and v agree, moments as computed by hand.

    With zero terminal SNR x_T ~ N(0, I) is exactly the marginal at T; what is left is each sampler's
    own discretisation, which _affine_moments follows exactly, so 5 standard errors suffice.
    """
    zsnr = VPProcess(rescale_betas_zero_snr(make_betas("linear", 200)))
    run, spacing, kind, eta = ZSNR_CASES[name]
    grid = list(range(1, 201)) if spacing == "all" else step_grid(200, int(name.split("-")[2]), spacing).tolist()
    assert grid[-1] == 200
    n = 20000
    x_T = torch.randn(n, 1, dtype=f64, generator=torch.Generator().manual_seed(7))
    outs = {kind_: run(exact_pred(zsnr, kind_), zsnr, x_T, torch.Generator().manual_seed(8), kind_)
            for kind_ in ("v", "x0")}
    assert bool(torch.isfinite(outs["v"]).all())
    torch.testing.assert_close(outs["v"], outs["x0"], rtol=1e-9, atol=1e-9)
    mean, std = _affine_moments(zsnr, grid, kind, eta)
    if spacing == "all":  # every step: close to the data's N(M, S^2) (coarse grids under-disperse)
        assert abs(mean - M) < 1e-9 and abs(std - S) < 0.03 * S, (mean, std)
    x0 = outs["v"]
    assert abs(x0.mean().item() - mean) < 5 * std / math.sqrt(n), (x0.mean().item(), mean)
    assert abs(x0.std().item() - std) < 5 * std / math.sqrt(2 * n), (x0.std().item(), std)
    with pytest.raises(ZeroSNRError):
        run(exact_eps(zsnr, M), zsnr, x_T[:4], torch.Generator().manual_seed(8), "eps")


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_ode_from_zero_snr_converges_to_the_exact_flow(spacing):
    """At zero SNR the exact flow of N(M, S^2) data maps x_T to M + S x_T (it keeps the z-score, and
    sqrt(alpha_bar_T) = 0); Euler (= DDIM eta 0) converges to it at order 1, Heun at order 2."""
    zsnr = VPProcess(rescale_betas_zero_snr(make_betas("linear", 200)))
    x_T = torch.linspace(-3, 3, 61, dtype=f64)[:, None]
    for method, order in (("euler", 1), ("heun", 2)):
        err = [(samplers.ode(exact_pred(zsnr, "v"), zsnr, x_T, n, method=method, spacing=spacing, prediction="v")
                - (M + S * x_T)).abs().max().item() for n in (10, 20, 40)]
        ratios = [math.log2(err[i] / err[i + 1]) for i in range(2)]
        assert all(abs(r - order) < 0.25 for r in ratios), (method, err, ratios)
    with pytest.raises(ZeroSNRError):
        samplers.ode(exact_eps(zsnr, M), zsnr, x_T, 10, spacing=spacing)


def test_leading_grid_never_reaches_T_so_eps_works_at_zero_snr(zsnr):
    assert step_grid(1000, 50, "leading")[-1] == 981
    x_T = torch.randn(8, 1, dtype=f64)
    a = samplers.ddim(exact_eps(zsnr, M), zsnr, x_T, 50)
    b = samplers.ddim(exact_pred(zsnr, "v"), zsnr, x_T, 50, prediction="v")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_spacing_reaches_the_samplers():
    p = VPProcess(make_betas("cosine", 100))
    x_T = torch.randn(3, 2, dtype=f64)
    for spacing in ("leading", "trailing", "linspace"):
        grid = step_grid(100, 7, spacing).flip(0).tolist()
        for run in (lambda cb: samplers.ddim(exact_eps(p, M), p, x_T, 7, spacing=spacing, callback=cb),
                    lambda cb: samplers.ode(exact_eps(p, M), p, x_T, 7, spacing=spacing, callback=cb),
                    lambda cb: samplers.ddpm(exact_eps(p, M), p, x_T, steps=7, spacing=spacing, callback=cb)):
            seen = []
            run(seen.append)
            assert [info["t"] for info in seen] == grid, spacing
    with pytest.raises(ScheduleError, match="choose from leading, trailing, linspace"):
        samplers.ddim(exact_eps(p, M), p, x_T, 7, spacing="uniform")
    with pytest.raises(ValueError, match="choose from eps, x0, v"):
        samplers.ode(exact_eps(p, M), p, x_T, 7, prediction="score")


def test_an_int_step_still_refuses_eps_at_zero_terminal_snr():
    """The samplers' int t takes the same zero-SNR guard as a tensor t (without looking at a device tensor)."""
    zsnr = VPProcess(rescale_betas_zero_snr(make_betas("linear", 20)))
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ZeroSNRError):
        zsnr.split(x, x, 20, "eps")
    with pytest.raises(ZeroSNRError):
        zsnr.reverse_mean(x, x, 20, "eps")
    torch.testing.assert_close(zsnr.split(x, x, 20, "v")[0], zsnr.split(x, x, torch.full((2,), 20), "v")[0],
                               rtol=0, atol=0)
