"""The VAE's discretised logistic decoder on 8-bit grey data: a probability mass over the 256 levels
(closed form against the logistic CDF at the bin edges), IWAE below the ELBO in nats of discrete
data with bits/dim = nats/(784 ln 2), samples on the grid, a tiny training run that learns."""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_vae import _strokes
from zoo.common.config import ConfigError
from zoo.common.data import to_view
from zoo.common.trainer import TrainConfig, Trainer
from zoo.evaluation import likelihoods
from zoo.vae.model import Config, build, discretised_logistic_log_prob

GRID = to_view(torch.arange(256, dtype=torch.uint8), "grey")  # the 256 levels 2k/255 - 1, as the data hold them
CFG = Config(data="mnist-grey", likelihood="discretised-logistic", arch="mlp", latent_dim=4, hidden=64, iwae_k=200)


def test_the_256_bin_masses_sum_to_one_for_any_location_and_scale():
    g = torch.Generator().manual_seed(0)
    loc = torch.cat([3 * torch.randn(200, generator=g, dtype=torch.float64),
                     torch.tensor([-1e3, -1.0, -1 + 1 / 255, 0.0, 1 - 3 / 255, 1.0, 1e3], dtype=torch.float64)])
    log_scale = torch.cat([torch.rand(200, generator=g, dtype=torch.float64) * 16 - 10,
                           torch.tensor([-30.0, -30.0, -30.0, 8.0, -12.0, 0.0, 3.0], dtype=torch.float64)])
    lp = discretised_logistic_log_prob(GRID[:, None], loc, log_scale)  # (256, N)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    total = torch.logsumexp(lp, 0).exp()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    # A location on a bin edge with a tiny scale: the two bins beside it share the mass.
    torch.testing.assert_close(lp[:2, 202].exp(), torch.tensor([0.5, 0.5], dtype=torch.float64), rtol=0, atol=1e-12)


def _sigmoid(t: float) -> float:
    return 1 / (1 + math.exp(-t)) if t >= 0 else math.exp(t) / (1 + math.exp(t))


@pytest.mark.parametrize("loc, scale, k", [
    (0.1, 0.05, 140),  # the bulk
    (0.1, 0.05, 0), (-1.5, 0.3, 0), (0.95, 0.01, 0),  # the first bin, (-inf, x_0 + 1/255]: likely, likely, far tail
    (0.1, 0.05, 255), (1.2, 0.2, 255),  # the last bin, [x_255 - 1/255, +inf)
    (-0.9, 0.02, 200),  # far in the upper tail: F(b) - F(a) = 1 - 1 in float64, the survival functions differ
    (0.9, 0.02, 10),  # far in the lower tail
])
def test_one_pixel_against_the_logistic_cdf_at_its_bin_edges(loc, scale, k):
    x = 2 * k / 255 - 1
    lo, hi = (x - 1 / 255 - loc) / scale, (x + 1 / 255 - loc) / scale
    if k == 0:
        p = _sigmoid(hi)  # F(hi)
    elif k == 255:
        p = _sigmoid(-lo)  # 1 - F(lo)
    elif lo > 0:
        p = _sigmoid(-lo) - _sigmoid(-hi)  # (1 - F(lo)) - (1 - F(hi)), no cancellation in the upper tail
    else:
        p = _sigmoid(hi) - _sigmoid(lo)
    got = discretised_logistic_log_prob(GRID[k:k + 1], torch.tensor(loc, dtype=torch.float64),
                                        torch.tensor(math.log(scale), dtype=torch.float64))
    assert got.item() == pytest.approx(math.log(p), rel=1e-12)


def test_validation_names_the_choices_at_construction():
    with pytest.raises(ConfigError, match="bernoulli, gaussian, discretised-logistic"):
        Config(data="mnist-grey", likelihood="logistic")
    with pytest.raises(ConfigError, match=r"data for the discretised-logistic likelihood .*choose from mnist-grey$"):
        Config(data="mnist-unit", likelihood="discretised-logistic")


def _grey_strokes(n: int, seed: int) -> torch.Tensor:
    """8-bit grey images: the binary strokes of test_vae, each stroke at its own grey level 100..255."""
    g = torch.Generator().manual_seed(seed + 100)
    level = torch.randint(100, 256, (n, 1, 1, 1), generator=g)
    x8 = torch.where(_strokes(n, seed) > 0, level, 0).to(torch.uint8)  # (n, 1, 28, 28)
    return to_view(x8, "grey")


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x = build(CFG), _grey_strokes(256, seed=0)
    g = torch.Generator().manual_seed(1)
    before = model.neg_elbo(x, generator=g).mean().item()
    Trainer(model, (x,), TrainConfig(epochs=6, batch_size=32, lr=3e-3, log_every=8, progress=False)).fit()
    return model.eval(), before, model.neg_elbo(x, generator=g).mean().item()


def test_tiny_training_lowers_the_negative_elbo(trained):
    _, before, after = trained  # 48 steps on 256 images
    assert after < 0.7 * before, (before, after)  # ~1660 -> ~1070 nats


def test_iwae_below_elbo_in_nats_of_discrete_data_and_bits_per_dim(trained):
    model, _, _ = trained
    x = _grey_strokes(32, seed=1)
    g = torch.Generator().manual_seed(2)
    neg_elbo = model.neg_elbo(x, samples=20, generator=g)
    iwae = model.nll((x,), generator=g)  # k = 200
    assert torch.isfinite(neg_elbo).all() and torch.isfinite(iwae).all()
    assert (iwae > 0).all()  # -log of a probability mass, never of a density above 1
    d = neg_elbo - iwae
    assert d.mean() > 4 * d.std() / math.sqrt(len(d)), (neg_elbo.mean(), iwae.mean())  # t ~ 6 here
    rows = likelihoods(model, "mnist-grey", (x,), chunk=16, seed=3)
    assert set(rows) == {"elbo", "nll"} and rows["nll"]["nats"] < rows["elbo"]["nats"]
    for row in rows.values():
        assert row["bits_per_dim"] == pytest.approx(row["nats"] / (784 * math.log(2)), rel=1e-12)
        assert 0 < row["bits_per_dim"] < 8  # better than uniform over the 256 levels


def test_samples_lie_on_the_256_levels(trained):
    model, _, _ = trained
    s = model.sample(16, generator=torch.Generator().manual_seed(0))
    assert s.shape == (16, 1, 28, 28) and torch.isin(s, GRID).all()
    assert len(s.unique()) > 2  # grey levels, not only black and white
    m = model.sample(4, mean=True)
    assert (m.abs() <= 1).all() and not torch.isin(m, GRID).all()
