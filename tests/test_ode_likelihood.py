"""Probability-flow ODE likelihood: divergences, the integrators, VP and VE against closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from zoo import ZooError
from zoo.common import ode_likelihood as ode
from zoo.continuous_time import ve
from zoo.continuous_time.model import Config as VEConfig
from zoo.continuous_time.model import build as build_ve
from zoo.gaussian.model import Config, build
from zoo.gaussian.ode_likelihood import ContinuousAlphaBar, ode_terms
from zoo.gaussian.process import VPProcess
from zoo.gaussian.schedules import make_betas

f64 = torch.float64
M, S, D = 0.3, 0.5, 3  # data N(M, S^2 I) in D dimensions


def _log_normal(y: torch.Tensor, mean: float, var: float) -> torch.Tensor:
    return (-0.5 * (y - mean) ** 2 / var - 0.5 * math.log(2 * math.pi * var)).sum(1)


def _data(n: int = 6, seed: int = 0) -> torch.Tensor:
    return M + S * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=f64)


# --------------------------------------------------------------------------- divergences


def test_divergence_of_a_linear_map_exact_and_hutchinson_by_enumeration():
    """g(y) = A y: the exact trace is tr A; Hutchinson's e^T A e averaged over all 2^D sign vectors is tr A."""
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=f64)
    y = torch.randn(2, 4, dtype=f64)
    g = lambda y, s: y @ A.T  # noqa: E731
    d, div = ode.drift_and_divergence(g, y, 0.0)
    torch.testing.assert_close(d, y @ A.T)
    torch.testing.assert_close(div, torch.full((2,), A.trace().item(), dtype=f64))
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=f64)  # (16, 4)
    est = torch.stack([ode.drift_and_divergence(g, y, 0.0, e.expand(2, 4))[1] for e in signs])  # (16, 2)
    torch.testing.assert_close(est.mean(0), torch.full((2,), A.trace().item(), dtype=f64))
    assert est.std(0).min() > 0.1  # one probe is not the trace: the average is what is exact
    for probe in (None, signs[0].expand(2, 4)):  # a flow that ignores y has no divergence
        d, div = ode.drift_and_divergence(lambda y, s: torch.ones_like(y) * s, y, 2.0, probe)
        assert torch.equal(d, torch.full_like(y, 2.0)) and torch.equal(div, torch.zeros(2, dtype=f64))


def test_rademacher_is_seeded_signs():
    a = ode.rademacher((1000,), "cpu", torch.Generator().manual_seed(3))
    b = ode.rademacher((1000,), "cpu", torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.tolist()) == {-1.0, 1.0}
    assert abs(a.mean().item()) < 4 / math.sqrt(1000)


def test_karras_grid_and_bad_options():
    grid = ode.karras_grid(0.0, 80.0, 10)
    assert len(grid) == 11 and grid[0] == 0.0 and grid[-1] == 80.0
    assert all(b > a for a, b in zip(grid[:-1], grid[1:]))
    with pytest.raises(ZooError, match="unknown ODE solver 'euler'; choose from heun, rk45"):
        ode.check_solver("euler")
    with pytest.raises(ZooError, match="sigma_min < sigma_max"):
        ode.karras_grid(2.0, 1.0, 4)


def test_dequantised_uniform_density_is_eight_bits():
    """The uniform density on the 256 bins' union [-1 - w/2, 1 + w/2]^D has -log P(x) = D log 256 exactly."""
    w, dims = ode.BIN_WIDTH_8BIT, 5
    x = (2 * torch.randint(0, 256, (7, dims)) / 255 - 1).double()
    seen = []

    def uniform(y):
        seen.append(y)
        lp = torch.full((y.shape[0],), -dims * math.log(2 + w), dtype=f64)
        return {"log_prob": lp, "prior": lp, "integral": torch.zeros_like(lp)}

    out = ode.dequantised_nll(uniform, x, w, torch.Generator().manual_seed(0))
    assert bool(((seen[0] - x).abs() <= w / 2).all()) and bool((seen[0] != x).all())
    torch.testing.assert_close(out["dequant"], torch.full((7,), -dims * math.log(w), dtype=f64))
    torch.testing.assert_close(out["bits_per_dim"], torch.full((7,), 8.0, dtype=f64))
    cont = ode.dequantised_nll(uniform, x, None)
    assert torch.equal(seen[1], x) and bool((cont["dequant"] == 0).all())


# --------------------------------------------------------------------------- VP


def _linear_process() -> VPProcess:
    return VPProcess(make_betas("linear", 1000))


def test_continuous_alpha_bar_interpolates_and_inverts():
    p = _linear_process()
    cab = ContinuousAlphaBar(p)
    t = torch.arange(0, 1001, dtype=f64)
    expected = torch.cat([torch.zeros(1, dtype=f64), p.alpha_bars.log()])
    torch.testing.assert_close(cab.log_alpha_bar(t), expected, rtol=0, atol=1e-13)
    # Halfway between steps: the geometric mean of alpha_bar.
    torch.testing.assert_close(cab.log_alpha_bar(torch.tensor([41.5], dtype=f64)),
                               0.5 * (p.alpha_bars[40:42].log().sum()).reshape(1))
    for s in (0.0, 1e-4, 0.01, 0.3, 2.0, 50.0, cab.sigma_max):
        assert cab.sigma(cab.t_of_sigma(s)) == pytest.approx(s, rel=1e-9, abs=1e-12)
    assert cab.sigma_max == pytest.approx(math.sqrt(1 / p.alpha_bars[-1].item() - 1), rel=1e-12)


def _exact_eps_at(process: VPProcess):
    """E[eps | x_t] for x0 ~ N(M, S^2) at fractional t, alpha_bar interpolated with numpy (independently)."""
    table = np.concatenate([[0.0], np.log(process.alpha_bars.numpy())])

    def eps_at(x, t):
        la = torch.from_numpy(np.interp(t.numpy(), np.arange(len(table)), table)).to(x)
        a, b = la.mul(0.5).exp()[:, None], (1 - la.exp()).sqrt()[:, None]
        return b * (x - a * M) / (a * a * S * S + b * b)

    return eps_at


def _vp_closed_form(x: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """-log p_model(x): the exact flow scales x - M by sqrt((S^2 + s_max^2)/(S^2 + s_min^2)) (marginals
    N(M, S^2 + sigma^2) in DDIM's y), then the prior N(0, 1 + s_max^2) and the Jacobian of the map."""
    scale = math.sqrt((S ** 2 + sigma_max ** 2) / (S ** 2 + sigma_min ** 2))
    y1 = M + (x - M) * scale
    return -(_log_normal(y1, 0.0, 1 + sigma_max ** 2) + D * math.log(scale))


def test_vp_ode_matches_the_closed_form_and_converges():
    p = _linear_process()
    cab, x = ContinuousAlphaBar(p), _data()
    ref = _vp_closed_form(x, 0.0, cab.sigma_max)
    # The model's prior N(0, 1 + s^2) differs from the marginal N(M, S^2 + s^2) at s = sigma_T; in
    # log p that is, to first order, the cross term M (y - M)/(S^2 + s^2) ~ M |x - M|/(S sigma_T) per dimension.
    mismatch = 2 * M * (x - M).abs().sum(1) / (S * cab.sigma_max) + 1e-3
    assert bool(((ref - (-_log_normal(x, M, S ** 2))).abs() < mismatch).all())
    errors = []
    for steps in (8, 16, 32, 64):
        out = ode_terms(_exact_eps_at(p), cab, x, None, steps=steps, hutchinson=False)
        torch.testing.assert_close(out["total"], out["prior"] + out["divergence"])
        errors.append((out["total"] - ref).abs().max().item())
    # Heun is second order: each doubling of the steps divides the error by about 4 (at least 3 here).
    assert all(b < a / 3 for a, b in zip(errors[:-1], errors[1:])), errors
    # Global error C D/N^2 with C ~ 130 nats per dimension for this flow on the Karras grid (rho = 7).
    assert errors[-1] < 150 * D / 64 ** 2, errors
    rk = ode_terms(_exact_eps_at(p), cab, x, None, solver="rk45", hutchinson=False, rtol=1e-7, atol=1e-7)
    assert (rk["total"] - ref).abs().max() < 1e-3


def test_vp_ode_from_t_min():
    p = _linear_process()
    cab, x = ContinuousAlphaBar(p), _data()
    s_min = cab.sigma(5.0)
    out = ode_terms(_exact_eps_at(p), cab, x, None, steps=64, hutchinson=False, t_min=5.0)
    assert (out["total"] - _vp_closed_form(x, s_min, cab.sigma_max)).abs().max() < 0.1


def _toy_model(**kw):
    torch.manual_seed(0)
    return build(Config(data="swiss-roll", arch="mlp", hidden=16, layers=2, schedule="cosine", T=50, **kw))


def test_exact_trace_and_hutchinson_agree_within_their_standard_error():
    """A 2-D toy (an untrained, nonlinear MLP): K probes of the same point, mean within 4 standard errors."""
    model, K = _toy_model(), 400
    x = torch.tensor([[0.5, -1.0]])
    exact = model.ode_terms((x,), steps=8, hutchinson=False)["total"]
    est = model.ode_terms((x.expand(K, 2),), steps=8, hutchinson=True,
                          generator=torch.Generator().manual_seed(0))["total"]
    se = est.std().item() / math.sqrt(K)
    assert se > 1e-4  # the probes do differ
    assert abs(est.mean().item() - exact.item()) < 4 * se, (est.mean().item(), exact.item(), se)


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_eps_at_integer_steps_equals_eps(param):
    model = _toy_model(param=param)
    x, t = torch.randn(5, 2), torch.tensor([1, 7, 20, 33, 50])
    torch.testing.assert_close(model.eps_at(x, t.double()), model.eps(x, t), rtol=1e-5, atol=1e-5)


def test_gaussian_model_ode_nll_on_images(fake_mnist):
    from zoo.common.data import load_mnist

    x, _ = load_mnist("test", view="grey", limit=2)
    model = build(Config(arch="unet", channels=(8, 16), T=20))
    kw = dict(steps=3, generator=torch.Generator().manual_seed(0))
    terms = model.ode_terms((x,), **kw)
    torch.testing.assert_close(terms["dequant"], torch.full((2,), -784 * math.log(2 / 255), dtype=f64))
    torch.testing.assert_close(terms["total"], terms["ode"] + terms["dequant"])
    torch.testing.assert_close(terms["bits_per_dim"], terms["total"] / (784 * math.log(2)))
    assert bool(torch.isfinite(terms["total"]).all())
    torch.testing.assert_close(model.ode_nll((x,), **{**kw, "generator": torch.Generator().manual_seed(0)}),
                               terms["total"])


def test_gaussian_ode_nll_refuses_what_it_cannot_compute():
    with pytest.raises(ZooError, match="choose param eps, x0 or v"):
        _toy_model(param="mean").ode_nll((torch.randn(2, 2),))
    with pytest.raises(ZooError, match="t_min > 0"):
        _toy_model(param="x0").ode_nll((torch.randn(2, 2),))
    with pytest.raises(ZooError, match="unknown ODE solver 'rk4'; choose from heun, rk45"):
        _toy_model().ode_nll((torch.randn(2, 2),), solver="rk4")
    assert torch.isfinite(_toy_model(param="x0").ode_nll((torch.randn(2, 2),), steps=4, t_min=1.0)).all()


# --------------------------------------------------------------------------- VE


def _ve_closed_form(x: torch.Tensor, sigma_q: float, t_min: float) -> torch.Tensor:
    """Marginals N(M, S^2 + sigma_q^2 t): the flow scales x - M by sqrt((S^2 + sigma_q^2)/(S^2 + sigma_q^2 t_min));
    the prior is the sampler's N(0, sigma_q^2)."""
    scale = math.sqrt((S ** 2 + sigma_q ** 2) / (S ** 2 + sigma_q ** 2 * t_min))
    y1 = M + (x - M) * scale
    return -(_log_normal(y1, 0.0, sigma_q ** 2) + D * math.log(scale))


def test_ve_ode_matches_the_closed_form_and_converges():
    sigma_q, t_min, x = 4.0, 1e-6, _data()
    x0_mean = ve.gaussian_x0_mean(M, S, sigma_q)
    ref = _ve_closed_form(x, sigma_q, t_min)
    errors = [(ve.ode_terms(x0_mean, x, sigma_q, None, t_min, steps=n, hutchinson=False)["total"] - ref)
              .abs().max().item() for n in (8, 16, 32, 64)]
    assert all(b < a / 3 for a, b in zip(errors[:-1], errors[1:])), errors
    assert errors[-1] < 0.05, errors
    rk = ve.ode_terms(x0_mean, x, sigma_q, None, t_min, solver="rk45", hutchinson=False, rtol=1e-7, atol=1e-7)
    assert (rk["total"] - ref).abs().max() < 1e-3
    # The data's own density, up to the prior's mismatch with the true marginal at t = 1.
    assert (ref - (-_log_normal(x, M, S ** 2))).abs().max() < 1.0
    with pytest.raises(ZooError, match=r"t_min must be in \(0, 1\)"):
        ve.ode_terms(x0_mean, x, sigma_q, None, 0.0)


def test_ve_model_has_a_likelihood(fake_mnist):
    from zoo.common.data import load_mnist

    torch.manual_seed(0)
    toy = build_ve(VEConfig(data="spiral", hidden=16, layers=2))
    assert toy.nll.__func__ is toy.ode_nll.__func__
    nll = toy.nll((torch.randn(4, 2),), steps=4)
    assert nll.shape == (4,) and bool(torch.isfinite(nll).all())
    x, _ = load_mnist("test", view="grey", limit=2)
    img = build_ve(VEConfig(data="mnist-grey", channels=(8, 16), embed_dim=16))
    terms = img.ode_terms((x,), steps=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["dequant"], torch.full((2,), -784 * math.log(2 / 255), dtype=f64))
    assert bool(torch.isfinite(terms["total"]).all())
