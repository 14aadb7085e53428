"""Learned reverse variances, the hybrid loss, importance-sampled t, and the binary decoder."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.gaussian import losses
from zoo.gaussian.learned_variance import HISTORY, UNIFORM_PROB, ImportanceSampler, LearnedLogVariance
from zoo.gaussian.likelihood import binary_gaussian_log_likelihood, elbo_terms
from zoo.gaussian.model import Config, build
from zoo.gaussian.process import VPProcess
from zoo.gaussian.samplers import ddpm
from zoo.gaussian.schedules import make_betas

f64 = torch.float64


def _process(T: int = 20) -> VPProcess:
    return VPProcess(make_betas("cosine", T))


def _eps_fn(v_value: float | None):
    """A fixed nonlinear eps-denoiser; with v_value, a learned-variance one returning (eps, v)."""

    def fn(x_t, t):
        eps = torch.tanh(x_t) * (t[:, None].to(x_t) / 20)
        return eps if v_value is None else (eps, torch.full_like(x_t, v_value))

    return fn


# --------------------------------------------------------------------------- the interpolation


def test_learned_log_variance_interpolates_between_the_fixed_ones():
    p = _process()
    lv = LearnedLogVariance(p)
    t = torch.arange(1, 21)
    ones = torch.ones(20, 3, dtype=f64)
    torch.testing.assert_close(lv(t, ones), p.betas.log()[:, None].expand(20, 3), rtol=0, atol=0)
    clipped = p.beta_tildes.clone()
    clipped[0] = p.beta_tildes[1]  # beta_tilde_1 = 0: improved-diffusion's posterior_log_variance_clipped
    torch.testing.assert_close(lv(t, -ones), clipped.log()[:, None].expand(20, 3), rtol=0, atol=1e-15)
    geometric = (p.betas * clipped).sqrt().log()[:, None].expand(20, 3)  # v = 0: f = 1/2
    torch.testing.assert_close(lv(t, 0 * ones), geometric, rtol=0, atol=1e-14)


@pytest.mark.parametrize("v,fixed", [(1.0, "beta"), (-1.0, "beta_tilde")])
def test_f_one_and_f_zero_reproduce_the_fixed_elbo_terms(v, fixed):
    p, x0 = _process(), torch.randn(6, 4, dtype=f64)
    kw = dict(decoder="gaussian", generator=None)
    learned = elbo_terms(_eps_fn(v), p, x0, variance="learned", **{**kw, "generator": torch.Generator().manual_seed(0)})
    ref = elbo_terms(_eps_fn(None), p, x0, variance=fixed, **{**kw, "generator": torch.Generator().manual_seed(0)})
    torch.testing.assert_close(learned["kl"], ref["kl"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(learned["prior"], ref["prior"], rtol=0, atol=0)
    if fixed == "beta":  # the fixed bound's decoder has std sqrt(beta_1): f = 1 is exactly it
        torch.testing.assert_close(learned["total"], ref["total"], rtol=1e-12, atol=1e-12)
    else:  # f = 0 decodes with std sqrt(beta_tilde_2) instead: recompute that term by hand
        g = torch.Generator().manual_seed(0)
        eps = torch.randn((20 * 6, 4), generator=g, dtype=f64)[:6]  # step 1's noise comes first
        a, b = p.alpha_bars[0].sqrt(), (1 - p.alpha_bars[0]).sqrt()
        x1 = a * x0 + b * eps
        mu = (x1 - p.betas[0] / b * _eps_fn(None)(x1, torch.ones(6, dtype=torch.long))) / p.alphas[0].sqrt()
        var = p.beta_tildes[1]
        nll = (0.5 * (x0 - mu) ** 2 / var + 0.5 * torch.log(2 * math.pi * var)).sum(1)
        torch.testing.assert_close(learned["decoder"], nll, rtol=1e-10, atol=1e-10)


def test_ddpm_uses_the_learned_variance():
    p, x_T = _process(), torch.randn(5, 3, dtype=f64)
    for v, fixed in ((1.0, "beta"), (-1.0, "beta_tilde")):
        a = ddpm(_eps_fn(v), p, x_T, generator=torch.Generator().manual_seed(1))
        b = ddpm(_eps_fn(None), p, x_T, variance=fixed, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = ddpm(_eps_fn(0.0), p, x_T, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(c, b)


# --------------------------------------------------------------------------- the hybrid loss


def test_vlb_term_trains_only_the_variance():
    p = _process()
    x0, eps = torch.randn(8, 4, dtype=f64), torch.randn(8, 4, dtype=f64)
    t = torch.randint(1, 21, (8,))
    x_t = p.q_sample(x0, t, eps)
    eps_hat = torch.randn(8, 4, dtype=f64, requires_grad=True)
    v = torch.zeros(8, 4, dtype=f64, requires_grad=True)
    out = losses.vlb(p, LearnedLogVariance(p), x0, x_t, t, eps_hat, v, "gaussian")
    assert out.shape == (8,)
    out.sum().backward()
    assert eps_hat.grad is None and v.grad.abs().sum() > 0
    # Its value: T L_{t-1}/(D log 2), L_{t-1} the ELBO term with sigma^2 = sqrt(beta beta_tilde) (v = 0).
    mu_tilde, beta_tilde = p.posterior(x0, x_t, t)
    mu = p.mean_from_eps(eps_hat.detach(), x_t, t)
    clipped = p.beta_tildes.clone()
    clipped[0] = p.beta_tildes[1]
    var = (p.betas * clipped).sqrt()[t - 1][:, None]
    kl = 0.5 * (torch.log(var / beta_tilde) + beta_tilde / var - 1 + (mu_tilde - mu) ** 2 / var)
    dec = 0.5 * (x0 - mu) ** 2 / var + 0.5 * torch.log(2 * math.pi * var)
    L = torch.where(t[:, None] == 1, dec, kl).sum(1)
    torch.testing.assert_close(out.detach(), 20 * L / (4 * math.log(2)))


def test_hybrid_loss_and_config_checks():
    model = build(Config(data="swiss-roll", arch="mlp", hidden=16, layers=2, T=20, learn_variance=True))
    assert model.net.net[-1].out_features == 4  # mean and variance outputs for 2-D data
    out = model.loss((torch.randn(32, 2),))
    assert {"loss", "vlb", "mse_eps"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    for field, value in (("variance", "learned"), ("nll_variance", "learned"), ("t_sampling", "importance")):
        with pytest.raises(ValueError, match=f"{field} '{value}' needs learn_variance=True"):
            build(Config(data="swiss-roll", arch="mlp", **{field: value}))
    with pytest.raises(ValueError, match="unknown t_sampling 'sorted'; choose from uniform, importance"):
        build(Config(t_sampling="sorted"))


# --------------------------------------------------------------------------- importance sampling


def _naive_history(T: int, batches) -> tuple[list[list[float]], list[int]]:
    """improved-diffusion's update, example by example: append while not full, else shift."""
    hist, counts = [[] for _ in range(T)], [0] * T
    for t, losses_ in batches:
        for ti, li in zip(t.tolist(), losses_.tolist()):
            hist[ti - 1] = (hist[ti - 1] + [li])[-HISTORY:]
            counts[ti - 1] = min(counts[ti - 1] + 1, HISTORY)
    return hist, counts


def test_importance_sampler_history_matches_a_naive_loop():
    T, g = 6, torch.Generator().manual_seed(0)
    sampler = ImportanceSampler(T)
    batches = []
    for _ in range(12):
        t = torch.randint(1, T + 1, (9,), generator=g)  # repeated steps within a batch
        batches.append((t, torch.rand(9, generator=g, dtype=f64)))
        sampler.update(*batches[-1])
    hist, counts = _naive_history(T, batches)
    assert sampler.counts.tolist() == counts
    for row, ref, n in zip(sampler.history, hist, counts):
        assert row[HISTORY - n:].tolist() == ref
    assert set(sampler.state_dict()) == {"history", "counts"}


def test_importance_weights_are_unbiased():
    T = 8
    sampler = ImportanceSampler(T)
    torch.testing.assert_close(sampler.probs(), torch.full((T,), 1 / T, dtype=f64))  # uniform until warm
    per_t = torch.tensor([5.0, 0.1, 0.3, 1.0, 2.0, 0.02, 0.7, 3.0], dtype=f64)  # a fixed loss of each step
    noise = torch.linspace(0.5, 1.5, HISTORY, dtype=f64)
    for k in range(HISTORY):
        sampler.update(torch.arange(1, T + 1), per_t * noise[k])
    p = sampler.probs()
    rms = per_t * (noise ** 2).mean().sqrt()
    torch.testing.assert_close(p, (1 - UNIFORM_PROB) * rms / rms.sum() + UNIFORM_PROB / T)
    # Exactly in expectation: sum_t p_t w_t L_t = mean_t L_t, with w_t = 1/(T p_t).
    t, w = sampler.sample(200000, generator=torch.Generator().manual_seed(0))
    weights = 1 / (T * p)
    torch.testing.assert_close((p * weights * per_t).sum(), per_t.mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(w, weights[t - 1])
    est = w * per_t[t - 1]
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - per_t.mean().item()) < 4 * se
    # Importance sampling is the point: a smaller variance than uniform sampling of the same vector.
    assert est.var().item() < per_t.var(unbiased=False).item()


def test_importance_state_travels_with_the_model():
    kw = dict(data="swiss-roll", arch="mlp", hidden=16, layers=2, T=10, learn_variance=True, t_sampling="importance")
    model = build(Config(**kw))
    for _ in range(3):
        model.loss((torch.randn(64, 2),))["loss"].backward()
    assert int(model.t_sampler.counts.sum()) > 0
    with torch.no_grad():  # validation (no gradients) leaves the history alone
        before = model.t_sampler.history.clone()
        model.loss((torch.randn(64, 2),))
        assert torch.equal(model.t_sampler.history, before)
    fresh = build(Config(**kw))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.t_sampler.history, model.t_sampler.history)
    assert torch.equal(fresh.t_sampler.counts, model.t_sampler.counts)


def test_hybrid_training_on_fake_mnist_lowers_the_learned_elbo(fake_mnist):
    from zoo.common.data import load_mnist
    from zoo.common.trainer import TrainConfig, Trainer

    x, _ = load_mnist("train", view="grey")
    test, _ = load_mnist("test", view="grey", limit=8)
    torch.manual_seed(0)
    model = build(Config(arch="unet", channels=(8, 16), schedule="cosine", T=10, learn_variance=True,
                         t_sampling="importance", nll_variance="learned"))

    def bits():
        return (model.nll((test,), generator=torch.Generator().manual_seed(0)) / (784 * math.log(2))).mean().item()

    before = bits()
    Trainer(model, (x,), TrainConfig(max_steps=30, epochs=100, batch_size=16, lr=3e-3, progress=False)).fit()
    after = bits()
    assert after < 0.5 * before, (before, after)
    assert bool((model.t_sampler.counts == HISTORY).all())  # warmed up: importance sampling was used
    samples = model.sample(2, generator=torch.Generator().manual_seed(0), variance="learned")
    assert samples.shape == (2, 1, 28, 28) and bool(torch.isfinite(samples).all())


# --------------------------------------------------------------------------- binary decoder


@pytest.mark.parametrize("mean,std", [(0.3, 0.5), (-0.7, 0.01), (40.0, 0.01), (-40.0, 0.01), (0.0, 1.0)])
def test_binary_decoder_bins_sum_to_one(mean, std):
    logp = binary_gaussian_log_likelihood(torch.tensor([1.0, -1.0]), torch.tensor(mean), torch.tensor(std))
    assert logp.dtype == f64 and bool(torch.isfinite(logp).all())
    assert torch.logsumexp(logp, 0).item() == pytest.approx(0.0, abs=1e-12)


def test_binary_decoder_hand_computed():
    """mean 0.3, std 0.5: P(+1) = 1 - Phi((0 - 0.3)/0.5) = 1 - (1 + erf(-0.6/sqrt 2))/2 = 0.7257468822."""
    p_plus = 1 - 0.5 * (1 + math.erf((0 - 0.3) / 0.5 / math.sqrt(2)))
    assert p_plus == pytest.approx(0.7257468822, abs=1e-9)
    logp = binary_gaussian_log_likelihood(torch.tensor([1.0, -1.0]), torch.tensor(0.3), torch.tensor(0.5))
    torch.testing.assert_close(logp, torch.tensor([math.log(p_plus), math.log(1 - p_plus)], dtype=f64))


def test_gaussian_elbo_on_binarised_mnist_uses_the_binary_decoder(fake_mnist):
    from zoo.common.data import load_mnist

    x, _ = load_mnist("test", view="binary", limit=3)
    torch.manual_seed(0)
    model = build(Config(data="mnist-binary", arch="unet", channels=(8, 16), T=5))
    assert model.decoder == "binary"
    with torch.no_grad():  # eps_hat ~ 100: mu = x_1 - 1 +- noise, so the +1 pixels sit near the bin edge 0
        model.net.out[-1].bias.fill_(100.0)
        model.net.out[-1].weight.normal_(0, 0.1)
    terms = model.elbo_terms((x,), generator=torch.Generator().manual_seed(0))
    # Step 1's noise is the first block of the single draw; decode with P(x) = Phi(x mu/sqrt(beta_1)).
    p = model.process
    eps = torch.randn((5 * 3, 1, 28, 28), generator=torch.Generator().manual_seed(0))[:3]
    t1 = torch.ones(3, dtype=torch.long)
    x1 = p.q_sample(x, t1, eps)
    with torch.no_grad():
        mu = p.mean_from_eps(model.eps(x1, t1), x1, t1).double()
    prob = 0.5 * (1 + torch.erf(x.double() * mu / p.betas[0].sqrt() / math.sqrt(2)))
    torch.testing.assert_close(terms["decoder"], -prob.log().flatten(1).sum(1), rtol=1e-5, atol=1e-4)
    assert bool((terms["decoder"] > 0.1 * (x > 0).flatten(1).sum(1)).all())  # ~log 2 per +1 pixel
