"""The Gaussian formulation module: config validation, parameterisations, losses, guidance, nll, learning."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from zoo.common.metrics import sliced_wasserstein
from zoo.common.trainer import TrainConfig, Trainer
from zoo.formulations import DATASETS, load_dataset, module
from zoo.gaussian import losses
from zoo.gaussian.model import Config, GaussianDiffusion, build
from zoo.gaussian.process import VPProcess
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
    ("schedule", "cubic", "linear, quadratic, sigmoid, cosine"), ("arch", "resnet", "unet, scorenet, mlp"),
    ("sampler", "euler", "ddpm, ddim, ode"), ("variance", "fixed", "beta, beta_tilde, learned"),
    ("mm_target", "x0", "posterior, analytic"), ("mm_reduction", "max", "sum, mean"),
    ("method", "rk4", "euler, heun"), ("data", "cifar", "mnist-grey")])
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


def test_nll_is_the_sum_of_the_terms(fake_mnist):
    from zoo.common.data import load_mnist

    x, y = load_mnist("test", view="grey", limit=3)
    model = tiny_image()
    terms = model.elbo_terms((x, y), generator=torch.Generator().manual_seed(0))
    assert terms["kl"].shape == (3, 9) and terms["decoder"].shape == (3,)
    nll = model.nll((x, y), generator=torch.Generator().manual_seed(0))
    assert nll.shape == (3,) and bool(torch.isfinite(nll).all())
    torch.testing.assert_close(nll, terms["prior"] + terms["kl"].sum(1) + terms["decoder"])
    # Any model's bound on 784 8-bit pixels is positive and, untrained, well above 1 bit/dim.
    assert bool((nll / (784 * math.log(2)) > 1).all())


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
