"""Continuous-time VE diffusion: samplers against exact conditional means, targets, a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.common.trainer import TrainConfig, Trainer
from zoo.continuous_time import ve
from zoo.continuous_time.model import Config, build

S, SIGMA_Q = 0.5, 1.0  # p0 = N(0, S^2), the tutorial's homework example



def _exact_final_std(rule, dt: float, s: float = S, sigma_q: float = SIGMA_Q) -> float:
    """Std of x_0 when x_1 ~ p_1 = N(0, s^2 + sigma_q^2) and f is the exact E[x_{t-dt} | x_t], by the
    closed-form variance recursion of each step (x_t is Gaussian at every step, f linear in it):
    f = a x_t with a = (s^2 + sigma_q^2 (t - dt))/(s^2 + sigma_q^2 t)."""
    var = s ** 2 + sigma_q ** 2
    for k in range(ve.num_steps(dt), 0, -1):
        t = k * dt
        a = (s ** 2 + sigma_q ** 2 * (t - dt)) / (s ** 2 + sigma_q ** 2 * t)
        if rule == "stochastic":
            var = a ** 2 * var + sigma_q ** 2 * dt
        else:
            lam = ve.lambda_rule(t, dt) if rule == "lambda" else rule
            var = (1 - lam * (1 - a)) ** 2 * var
    return math.sqrt(var)


def _gaussian_run(rule, dt: float, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = ve.f_from_x0_mean(ve.gaussian_x0_mean(0.0, S, SIGMA_Q), dt)
    x_1 = math.sqrt(S ** 2 + SIGMA_Q ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return ve.sample(f, x_1, dt, rule, SIGMA_Q, generator=g)


def test_lambda_rule_values():
    dt = 1e-3
    assert ve.lambda_rule(dt, dt) == 1.0
    assert ve.lambda_rule(2 * dt, dt) == pytest.approx(2 ** 0.5 / (1 + 2 ** 0.5), abs=1e-12)
    assert round(ve.lambda_rule(2 * dt, dt), 3) == 0.586
    assert round(ve.lambda_rule(10 * dt, dt), 3) == 0.513
    assert ve.lambda_rule(1.0, dt) == pytest.approx(0.5, abs=2e-4)
    # The derivation's form (t/dt)(1 - sqrt(1 - dt/t)), on tensors too.
    t = torch.arange(1, 1001, dtype=torch.float64) * dt
    derived = (t / dt) * (1 - torch.sqrt(1 - dt / t))
    torch.testing.assert_close(ve.lambda_rule(t, dt), derived, rtol=1e-9, atol=1e-9)
    assert bool((ve.lambda_rule(t, dt)[1:] < ve.lambda_rule(t, dt)[:-1]).all())  # decreasing to 1/2


@pytest.mark.parametrize("rule", ["lambda", "stochastic"])
def test_gaussian_std_is_recovered(rule):
    dt, n = 5e-4, 20000
    se = S / math.sqrt(2 * (n - 1))  # standard error of a sample std of a Gaussian
    exact = _exact_final_std(rule, dt)
    assert abs(exact - S) < se  # the discretisation bias at this dt is below the Monte Carlo error
    x0 = _gaussian_run(rule, dt, n)
    assert abs(x0.std().item() - exact) < 4 * se
    assert abs(x0.std().item() - S) < 4 * se + abs(exact - S)
    assert abs(x0.mean().item()) < 4 * S / math.sqrt(n)


@pytest.mark.parametrize("lam, expected", [(0.0, math.sqrt(S ** 2 + SIGMA_Q ** 2)),
                                            (1.0, S ** 2 / math.sqrt(S ** 2 + SIGMA_Q ** 2))])
def test_fixed_lambda_0_and_1_fail(lam, expected):
    dt, n = 1e-2, 20000
    se = expected / math.sqrt(2 * (n - 1))
    assert _exact_final_std(lam, dt) == pytest.approx(expected, rel=1e-9)  # exact for every dt
    std = _gaussian_run(lam, dt, n).std().item()
    assert abs(std - expected) < 4 * se
    assert abs(std - S) > 0.25  # 1.12 (never moves) or 0.224 (collapse toward the mean), not 0.5


def test_point_mass_lambda_rule_lands_exactly():
    dt, x0 = 0.01, torch.tensor([0.3, -1.2], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    f = ve.f_from_x0_mean(ve.gaussian_x0_mean(x0, 0.0, SIGMA_Q), dt)
    x_1 = x0 + SIGMA_Q * torch.randn(500, 2, generator=g, dtype=torch.float64)
    out = ve.sample(f, x_1, dt, "lambda", SIGMA_Q)
    assert (out - x0).abs().max().item() < 1e-12
    # Every intermediate state stays on the exact marginal p_t = N(x0, sigma_q^2 t): radii shrink by
    # sqrt((t - dt)/t) per step.
    ratios = []
    ve.sample(f, x_1, dt, "lambda", SIGMA_Q,
              callback=lambda t, x: ratios.append(((x - x0).norm(dim=1) / (x_1 - x0).norm(dim=1)).std().item()))
    assert max(ratios) < 1e-10
    # A fixed lambda = 1/2 leaves noise of order sigma_q sqrt(dt) at the end.
    half = ve.sample(f, x_1, dt, 0.5, SIGMA_Q)
    assert (half - x0).norm(dim=1).mean().item() > 0.3 * SIGMA_Q * math.sqrt(dt)


def test_posterior_mean_and_x0_from_f_are_inverse():
    g = torch.Generator().manual_seed(2)
    x_t, x0 = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.1
    f = ve.posterior_mean(x_t, x0, t, 0.01)
    torch.testing.assert_close(ve.x0_from_f(x_t, f, t, 0.01), x0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.5])
def test_analytic_target_is_conditional_mean_of_sampled(t):
    """Given x0, (x_t, x_{t+dt}) are jointly Gaussian, so E[x_t | x_{t+dt}, x0] is the linear map whose
    residual has mean 0 and no correlation with x_{t+dt}; its variance is sigma_q^2 dt t/(t + dt)."""
    n, dt, sigma_q, x0 = 200000, 0.01, 2.0, 0.7
    g = torch.Generator().manual_seed(3)
    x0s = torch.full((n, 1), x0, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    x_t = ve.q_sample(x0s, tt, sigma_q, torch.randn(n, 1, generator=g, dtype=torch.float64))
    x_s = ve.forward_step(x_t, dt, sigma_q, torch.randn(n, 1, generator=g, dtype=torch.float64))
    resid = (x_t - ve.posterior_mean(x_s, x0s, tt + dt, dt)).squeeze(1)
    var = sigma_q ** 2 * dt * t / (t + dt)
    if t == 0.0:
        assert resid.abs().max().item() < 1e-12  # x_0 = x0: the target is exact
        return
    se = math.sqrt(var / n)
    assert abs(resid.mean().item()) < 4 * se
    corr = torch.corrcoef(torch.stack([resid, x_s.squeeze(1)]))[0, 1].item()
    assert abs(corr) < 4 / math.sqrt(n)
    assert resid.var().item() == pytest.approx(var, rel=4 * math.sqrt(2 / n))


def test_rule_and_config_validation():
    f = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="unknown rule"):
        ve.sample(f, torch.zeros(2, 2), 0.1, "euler")
    with pytest.raises(ValueError, match="whole number"):
        ve.sample(f, torch.zeros(2, 2), 0.3)
    with pytest.raises(ValueError, match="parameterisation"):
        build(Config(parameterisation="eps"))
    with pytest.raises(ValueError, match="target"):
        build(Config(target="exact"))


@pytest.mark.parametrize("param", ["f", "x0"])
def test_model_parameterisations_convert_exactly(param):
    torch.manual_seed(0)
    model = build(Config(data="spiral", parameterisation=param, dt=0.01)).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    t = torch.rand(16, dtype=torch.float64) * 0.9 + 0.1
    f = model.f(x, t)
    torch.testing.assert_close(ve.x0_from_f(x, f, t, 0.01), model.x0_hat(x, t))
    # The same model gives f at any other step through x0_hat.
    torch.testing.assert_close(model.f(x, t, 0.05), ve.posterior_mean(x, model.x0_hat(x, t), t, 0.05))


def test_mnist_model_shapes():
    torch.manual_seed(0)
    model = build(Config(data="mnist-grey", channels=(8, 16), embed_dim=16, sigma_q=3.0, dt=0.5))
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    out = model.loss((x0, torch.zeros(4, dtype=torch.long)))
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    assert model.loss_per_example(x0).shape == (4,)
    for rule in ("lambda", "stochastic", 0.5):
        assert model.sample(3, generator=torch.Generator().manual_seed(0), rule=rule).shape == (3, 1, 28, 28)


def test_tiny_spiral_run_learns():
    from zoo.common.metrics import sliced_wasserstein
    from zoo.common.data import spiral

    torch.manual_seed(0)
    data, ref = spiral(2048, seed=0), spiral(1024, seed=1)
    model = build(Config(data="spiral", sigma_q=4.0, dt=0.01))
    x_1 = 4.0 * torch.randn(1024, 2, generator=torch.Generator().manual_seed(0))
    before = sliced_wasserstein(model.sample(1024, x_1=x_1), ref)
    Trainer(model, (data,), TrainConfig(epochs=100, max_steps=400, batch_size=256, lr=2e-3, progress=False)).fit()
    after = sliced_wasserstein(model.sample(1024, x_1=x_1, dt=0.005), ref)
    noise = sliced_wasserstein(x_1, ref)
    assert after < 0.15 * noise  # the noise x_1 is ~3.1 away from the data, the learned samples ~0.25
    assert after < 0.5 * before  # the untrained x0-network maps everything near the origin (~1.0)
