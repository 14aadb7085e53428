"""The Gaussian formulation module: config validation, parameterisations, losses, guidance, nll, learning."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import special

from zoo.common.metrics import sliced_wasserstein
from zoo.common.trainer import TrainConfig, Trainer
from zoo.formulations import DATASETS, load_dataset, module
from zoo.gaussian import losses
from zoo import ZooError
from zoo.gaussian import samplers
from zoo.gaussian.model import Config, GaussianConfigError, GaussianDiffusion, build
from zoo.gaussian.process import VPProcess, ZeroSNRError
from zoo.gaussian.schedules import make_betas

f64 = torch.float64


def toy(**kw) -> GaussianDiffusion:
    return build(Config(data="swiss-roll", arch="mlp", hidden=32, layers=2, schedule="cosine", T=20, **kw))


def tiny_image(**kw) -> GaussianDiffusion:
    return build(Config(arch="unet", channels=(8, 16), T=10, **kw))


def test_registry_and_config():
    mod = module("gaussian")
    assert mod.Config is Config and mod.build is build
    assert dataclasses.is_dataclass(Config) and Config.__dataclass_params__.frozen
    assert Config().data in DATASETS
    assert isinstance(build(Config(channels=(8, 16))), torch.nn.Module)


@pytest.mark.parametrize("field,bad,choices", [
    ("param", "score", "eps, x0, v, mean"), ("loss", "l1", "simple, elbo-eps, mean-matching"),
    ("schedule", "cubic", "linear, quadratic, sigmoid, cosine"), ("arch", "resnet", "unet, scorenet, scorenet-padded, mlp"),
    ("sampler", "euler", "ddpm, ddim, ode"), ("variance", "fixed", "beta, beta_tilde, learned"),
    ("mm_target", "x0", "posterior, analytic"), ("mm_reduction", "max", "sum, mean"),
    ("method", "rk4", "euler, heun"), ("spacing", "uniform", "leading, trailing, linspace"),
    ("data", "cifar", "mnist-grey")])
def test_every_variant_is_validated_at_construction(field, bad, choices):
    with pytest.raises(ValueError, match=f"unknown {field} '{bad}'; choose from {choices}"):
        build(Config(**{field: bad}))


def test_elbo_eps_equals_mean_matching_with_analytic_target():
    """|mu_tilde - mu_theta|^2/(2 beta_t) = beta_t/(2 alpha_t (1 - alpha_bar_t)) |eps - eps_hat|^2, summed."""
    p = VPProcess(make_betas("linear", 100))
    x0, eps, eps_hat = (torch.randn(32, 1, 4, 4, dtype=f64) for _ in range(3))
    t = torch.randint(1, 101, (32,))
    x_t = p.q_sample(x0, t, eps)
    cfg = Config(mm_target="analytic", mm_reduction="sum")
    a = losses.elbo_eps(p, x0, x_t, t, eps, eps_hat)
    b = losses.mean_matching(p, x0, x_t, t, eps, eps_hat, cfg)
    assert a.shape == (32,)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    mean = losses.mean_matching(p, x0, x_t, t, eps, eps_hat, dataclasses.replace(cfg, mm_reduction="mean"))
    torch.testing.assert_close(mean, b / 16)
    torch.testing.assert_close(losses.simple(p, x0, x_t, t, eps, eps_hat), ((eps - eps_hat) ** 2).mean((1, 2, 3)))


def test_posterior_target_is_unbiased_up_to_the_posterior_variance():
    """E over x_{t-1} ~ q(. | x_t, x0) of the sampled loss = analytic loss + d beta_tilde/(2 beta)."""
    p = VPProcess(make_betas("linear", 100))
    x0, eps, eps_hat = (torch.randn(1, 3, dtype=f64).expand(20000, 3) for _ in range(3))
    t = torch.full((20000,), 40)
    x_t = p.q_sample(x0, t, eps)
    cfg = Config(mm_target="posterior", mm_reduction="sum")
    sampled = losses.mean_matching(p, x0, x_t, t, eps, eps_hat, cfg)
    analytic = losses.mean_matching(p, x0, x_t, t, eps, eps_hat, dataclasses.replace(cfg, mm_target="analytic"))
    offset = 3 * p.beta_tildes[39] / (2 * p.betas[39])
    se = sampled.std().item() / math.sqrt(len(sampled))
    assert abs(sampled.mean().item() - (analytic[0] + offset).item()) < 5 * se


@pytest.mark.parametrize("param", ["eps", "x0", "v", "mean"])
@pytest.mark.parametrize("loss", ["simple", "elbo-eps", "mean-matching"])
def test_every_parameterisation_and_loss_trains_a_step(param, loss):
    model = toy(param=param, loss=loss)
    out = model.loss((torch.randn(16, 2),))
    assert out["loss"].shape == () and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.net.parameters())
    if param == "mean":
        assert {"rho0", "rho1"} <= set(out) and model.rho0.grad is not None


def test_mean_parameterisation():
    model = toy(param="mean", rho_lr=0.2)
    assert model.rho0.item() == 1 and model.rho1.item() == 1
    with torch.no_grad():
        model.rho0.fill_(0.9)
        model.rho1.fill_(1.3)
    x_t, t = torch.randn(8, 2), torch.randint(1, 21, (8,))
    delta = model.net(x_t, t.float() / 20)
    mu = model.process.mean_from_eps(model.eps(x_t, t), x_t, t)
    torch.testing.assert_close(mu, 0.9 * (x_t - 1.3 * delta), rtol=1e-4, atol=1e-5)
    groups = model.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-3, 0.2]
    assert groups[1]["params"][0] is model.rho0
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert len(toy().param_groups(1e-3)) == 1


def test_t_min_restricts_the_training_steps():
    """t ~ U{t_min..T} in the loss (seed 001's code never trains step 1); the default draws every step."""
    seen = {}
    for t_min in (1, 2, 20):
        model, drawn = toy(param="mean", loss="mean-matching", t_min=t_min), []
        real = model.loss_fn
        model.loss_fn = lambda process, x0, x_t, t, *a: (drawn.append(t), real(process, x0, x_t, t, *a))[1]
        torch.manual_seed(0)
        for _ in range(20):
            model.loss((torch.randn(100, 2),))
        seen[t_min] = torch.cat(drawn)
    # 2000 draws from 20 (19) steps: each is drawn with probability 1 - (1 - 1/20)^2000 ~ 1 - 1e-44.
    assert set(seen[1].tolist()) == set(range(1, 21))
    assert set(seen[2].tolist()) == set(range(2, 21))
    assert set(seen[20].tolist()) == {20}


@pytest.mark.parametrize("bad", [0, 21, 1.5, True])
def test_t_min_is_validated(bad):
    with pytest.raises(GaussianConfigError, match="t_min"):
        toy(t_min=bad)
    with pytest.raises(GaussianConfigError, match="t_min 2 restricts uniform step sampling"):
        toy(t_min=2, learn_variance=True, t_sampling="importance")


def test_label_dropout_and_guided_sampling():
    model = tiny_image(num_classes=10, label_dropout=0.3)
    seen = []
    forward = model.net.forward
    model.net.forward = lambda x, t, y=None: (seen.append(y), forward(x, t, y))[1]
    x0, y = torch.rand(400, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (400,))
    model.loss((x0, y))
    dropped = (seen[0] == 10).float().mean().item()
    assert abs(dropped - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 400)
    kept = seen[0] != 10
    assert torch.equal(seen[0][kept], y[kept])
    for sampler in ("ddpm", "ddim", "ode"):
        seen.clear()
        x = model.sample(4, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=3, w=2.0,
                         labels=torch.tensor([1, 2, 3, 4]))
        assert x.shape == (4, 1, 28, 28) and bool((x.abs() <= 1).all())
        assert torch.equal(seen[0], torch.tensor([10, 10, 10, 10, 1, 2, 3, 4]))  # null half, then labels
    with pytest.raises(ValueError, match="unconditional"):
        tiny_image().sample(2, labels=torch.tensor([0, 1]))


def test_sampling_is_seeded():
    model = toy()
    for sampler in ("ddpm", "ddim", "ode"):
        a = model.sample(5, generator=torch.Generator().manual_seed(3), sampler=sampler, steps=5, eta=0.5)
        b = model.sample(5, generator=torch.Generator().manual_seed(3), sampler=sampler, steps=5, eta=0.5)
        assert a.shape == (5, 2) and torch.equal(a, b)


def _toy_net(x_t, tau, y=None):
    """A fixed 'network' of x_t and tau = t/T (float32, as the model passes it)."""
    return 0.5 * torch.tanh(x_t) * (1 + tau.to(x_t.dtype).reshape(-1, 1, 1, 1))


def _brute_force_bound(x0: np.ndarray, eps: np.ndarray, T: int, beta_T: float, param: str, zero_snr: bool):
    """Every term of the bound (nats, per example) from the SPEC's formulas, for _toy_net, in numpy.

    x0 (B, D) and the standard normal draws eps (T, B, D) of x_t; reverse variance beta_t; decoder the
    8-bit bins of N(mu_theta(x_1, 1), beta_1), the edge bins open.
    """
    beta = np.linspace(1e-4, beta_T, T)
    ab = np.cumprod(1 - beta)
    if zero_snr:  # Lin et al. Alg. 1, by hand
        a = np.sqrt(ab)
        ab = ((a - a[-1]) * a[0] / (a[0] - a[-1])) ** 2
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    beta = 1 - ab / ab_prev
    w = 1 / 255  # half a bin
    kl, decoder = np.zeros((x0.shape[0], T - 1)), None
    for k in range(T):
        t = k + 1
        a, b = np.sqrt(ab[k]), np.sqrt(1 - ab[k])
        x_t = a * x0 + b * eps[k]
        tau = np.float64(np.float32(t) / np.float32(T))
        pred = 0.5 * np.tanh(x_t) * (1 + tau)
        x0_hat = (x_t - b * pred) / a if param == "eps" else a * x_t - b * pred  # eps or v
        c0 = np.sqrt(ab_prev[k]) * beta[k] / (1 - ab[k])
        c1 = np.sqrt(1 - beta[k]) * (1 - ab_prev[k]) / (1 - ab[k])
        mu_theta = c0 * x0_hat + c1 * x_t
        if t == 1:
            sd = np.sqrt(beta[0])
            lo = np.where(x0 < -1 + w, -np.inf, (x0 - w - mu_theta) / sd)
            hi = np.where(x0 > 1 - w, np.inf, (x0 + w - mu_theta) / sd)
            upper = lo > 0  # take the difference in the tail where both CDFs are small
            p = np.where(upper, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))
            decoder = -np.log(p).sum(1)
        else:
            mu_tilde = c0 * x0 + c1 * x_t
            bt = (1 - ab_prev[k]) / (1 - ab[k]) * beta[k]
            kl[:, k - 1] = (0.5 * np.log(beta[k] / bt) + (bt + (mu_tilde - mu_theta) ** 2) / (2 * beta[k]) - 0.5).sum(1)
    prior = (0.5 * (ab[-1] * x0 ** 2 + (1 - ab[-1]) - 1 - np.log(1 - ab[-1]))).sum(1)
    return {"prior": prior, "kl": kl, "decoder": decoder, "total": prior + kl.sum(1) + decoder}


@pytest.mark.parametrize("param,zero_snr", [("eps", False), ("v", False), ("v", True)])
def test_nll_against_a_brute_force_bound(fake_mnist, param, zero_snr):
    """GaussianDiffusion.nll and its terms against _brute_force_bound, on T = 6 and a fixed toy network.

    The test draws the same x_t as the model (elbo_terms: one standard normal per step and example,
    steps outermost, from the generator given) and computes everything else itself, in float64.
    """
    from zoo.common.data import load_mnist

    x, y = load_mnist("test", view="grey", limit=3)
    x = x.double()
    T, B = 6, x.shape[0]
    model = build(Config(arch="unet", channels=(8, 16), T=T, beta_T=0.2, param=param, zero_terminal_snr=zero_snr,
                         loss="v" if zero_snr else "simple"))
    model.net.forward = _toy_net
    terms = model.elbo_terms((x, y), generator=torch.Generator().manual_seed(0))
    nll = model.nll((x, y), generator=torch.Generator().manual_seed(0))
    eps = torch.randn((T * B, *x.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=f64)
    ref = _brute_force_bound(x.flatten(1).numpy(), eps.reshape(T, B, -1).numpy(), T, 0.2, param, zero_snr)
    assert terms["kl"].shape == (B, T - 1) and nll.shape == (B,)
    for name in ("prior", "kl", "decoder"):
        np.testing.assert_allclose(terms[name].numpy(), ref[name], rtol=1e-11, atol=1e-11, err_msg=name)
    np.testing.assert_allclose(nll.numpy(), ref["total"], rtol=1e-11)
    if zero_snr:
        assert bool((terms["prior"] == 0).all())  # q(x_T | x0) = N(0, I) exactly


@pytest.mark.parametrize("field,bad,choices", [("param", "eps", "x0, v"), ("param", "mean", "x0, v"),
                                               ("loss", "simple", "v"), ("loss", "elbo-eps", "v"),
                                               ("loss", "mean-matching", "v")])
def test_zero_terminal_snr_is_validated(field, bad, choices):
    kw = {"param": "v", "loss": "v", field: bad}
    with pytest.raises(GaussianConfigError, match=f"zero_terminal_snr.*{bad}.*: choose from {choices}"):
        build(Config(zero_terminal_snr=True, **kw))
    assert isinstance(GaussianConfigError("x"), ZooError)


@pytest.mark.parametrize("param", ["eps", "mean"])
def test_v_loss_needs_an_x0_or_v_prediction(param):
    with pytest.raises(GaussianConfigError, match=f"loss 'v' .*{param}.*1/alpha_bar_t.*: choose from x0, v"):
        build(Config(loss="v", param=param))


def test_v_loss_is_the_x0_error_weighted_by_one_plus_snr():
    """|v - v_hat|^2 against (1 + SNR_t) |x0 - x0_hat|^2 (the same x_t), in float64 from alpha_bar alone."""
    p = VPProcess(make_betas("cosine", 50))
    g = torch.Generator().manual_seed(0)
    x0, eps, x0_hat = (torch.randn(6, 1, 4, 4, generator=g, dtype=f64) for _ in range(3))
    t = torch.tensor([1, 10, 25, 40, 49, 50])
    ab = p.alpha_bars[t - 1][:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    eps_hat = (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt()  # the same x_t, read back with x0_hat
    v_hat = ab.sqrt() * eps_hat - (1 - ab).sqrt() * x0_hat
    got = losses.v_loss(p, x0, x_t, t, eps, v_hat)
    want = ((1 + ab / (1 - ab)) * (x0 - x0_hat) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert losses.PREDICTION["v"] == "v" and all(losses.PREDICTION[k] == "eps" for k in ("simple", "elbo-eps"))


@pytest.mark.parametrize("param", ["v", "x0"])
def test_at_zero_terminal_snr_only_the_v_loss_reaches_the_network_at_t_T(param):
    """At t = T (alpha_bar_T = 0) L_simple's eps_hat is x_T whatever the network says: zero gradient.
    The v loss has one, and trained on a 2-D Gaussian blob the model's x0_hat at t = T becomes the data
    mean E[x0] (x_T is independent of x0 there), which is where every sampler starts."""
    torch.manual_seed(0)
    model = build(Config(data="swiss-roll", arch="mlp", hidden=32, layers=2, schedule="cosine", T=20,
                         param=param, loss="v", zero_terminal_snr=True))
    p, B = model.process, 256
    x0 = torch.tensor([1.5, -0.5]) + 0.3 * torch.randn(B, 2)
    eps, t = torch.randn(B, 2), torch.full((B,), 20)
    x_t = p.q_sample(x0, t, eps)
    assert torch.equal(x_t, eps)
    for loss, kind in ((losses.simple, "eps"), (losses.v_loss, "v")):
        model.zero_grad()
        pred = model.predict(x_t, t, prediction=kind)
        loss(p, x0, x_t, t, eps, pred).mean().backward()
        norm = sum(q.grad.abs().sum() for q in model.net.parameters() if q.grad is not None)
        assert (float(norm) == 0) == (loss is losses.simple), (loss.__name__, float(norm))
    data = torch.tensor([1.5, -0.5]) + 0.3 * torch.randn(4096, 2)
    Trainer(model, (data,), TrainConfig(max_steps=400, epochs=100, batch_size=256, lr=3e-3,
                                        lr_schedule="cosine", progress=False)).fit()
    with torch.no_grad():
        x0_hat = model.predict(torch.randn(2000, 2), torch.full((2000,), 20), prediction="x0")
    # Untrained, x0_hat at t = T is within 0.12 of 0, 1.6 from the data mean; trained with the v loss it
    # lands within 0.05 of it (0.1-0.3 with L_simple, learned only through t < T) and is nearly constant
    # in x_T (spread 0.03-0.08; 0.1-0.4 with L_simple), as E[x0 | x_T] = E[x0] is.
    assert (x0_hat.mean(0) - torch.tensor([1.5, -0.5])).abs().max() < 0.2, x0_hat.mean(0)
    assert float(x0_hat.std(0).max()) < 0.15, x0_hat.std(0)


@pytest.mark.parametrize("param", ["v", "x0"])
def test_zero_terminal_snr_model_trains_samples_and_bounds_through_t_T(param):
    model = toy(param=param, loss="v", zero_terminal_snr=True)
    p = model.process
    assert p.alpha_bars[-1].item() == 0 and model.prediction == param
    # The loss at t = T (x_T = eps) is finite and differentiable.
    x_t, t = torch.randn(8, 2), torch.full((8,), 20)
    assert bool(torch.isfinite(model.predict(x_t, t, prediction="x0")).all())
    out = model.loss((torch.randn(64, 2),))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for sampler, spacing in (("ddpm", "leading"), ("ddim", "trailing"), ("ode", "linspace")):
        seen = []
        x = model.sample(16, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=5,
                         spacing=spacing, callback=seen.append)
        assert seen[0]["t"] == 20 and bool(torch.isfinite(x).all()), sampler
    nll = model.nll((torch.randn(4, 2),), generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(nll).all())
    # The eps denoiser is fine below T and refuses t = T.
    with pytest.raises(ZeroSNRError, match="choose from x0, v"):
        samplers.ddim(model.denoiser(), p, torch.randn(4, 2), 5, spacing="trailing")


def test_spacing_from_config_and_sample():
    model = toy(spacing="trailing")
    for sampler in ("ddim", "ode"):
        # T = 20, 5 steps: trailing 4, 8, ..., 20 (the config's); leading 1, 5, ..., 17; linspace 1, 6, 11, 15, 20.
        for spacing, grid in ((None, [20, 16, 12, 8, 4]), ("leading", [17, 13, 9, 5, 1]),
                              ("linspace", [20, 15, 11, 6, 1])):
            seen = []
            model.sample(3, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=5, spacing=spacing,
                         callback=seen.append)
            assert [info["t"] for info in seen] == grid, (sampler, spacing)
    with pytest.raises(GaussianConfigError, match="choose from leading, trailing, linspace"):
        model.sample(3, sampler="ddim", spacing="even")


def test_denoiser_predictions_are_exact_conversions():
    model = toy(param="v")
    x_t, t = torch.randn(8, 2, dtype=f64), torch.randint(1, 21, (8,))
    model.double()
    v = model.denoiser(prediction="v")(x_t, t)
    torch.testing.assert_close(model.denoiser(prediction="x0")(x_t, t), model.process.convert(v, x_t, t, "v", "x0"))
    torch.testing.assert_close(model.denoiser()(x_t, t), model.process.convert(v, x_t, t, "v", "eps"))
    clipped_x0 = model.denoiser(prediction="x0", clip=True)(x_t * 50, t)
    assert bool((clipped_x0.abs() <= 1 + 1e-12).all())


def test_swiss_roll_training_learns():
    """A small MLP trained through the shared Trainer: samples move from noise to the data."""
    (train,) = load_dataset("swiss-roll", "train", limit=4000)
    (test,) = load_dataset("swiss-roll", "test", limit=2000)
    torch.manual_seed(0)
    model = build(Config(data="swiss-roll", arch="mlp", hidden=128, layers=3, schedule="cosine", T=100))
    Trainer(model, (train,), TrainConfig(max_steps=1200, epochs=100, batch_size=256, lr=3e-3,
                                         lr_schedule="cosine", progress=False)).fit()
    g = torch.Generator().manual_seed(1)
    noise = sliced_wasserstein(torch.randn(2000, 2, generator=g), test)
    floor = sliced_wasserstein(train[:2000], test)  # two samples of the data itself
    for sampler in ("ddpm", "ddim", "ode"):
        d = sliced_wasserstein(model.sample(2000, generator=g, sampler=sampler, steps=50), test)
        assert d < 0.5 * noise and d < 4 * floor, (sampler, d, noise, floor)
