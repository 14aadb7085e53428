"""`zoo train`, `zoo sample`, `zoo eval` end to end on a formulation, through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_zoo

from zoo.common.classifier import test_slice as mnist_slice
from zoo.common.data import load_dataset
from zoo.common.metrics import classifier_predict, sliced_wasserstein
from zoo.gaussian.model import GaussianDiffusion
from zoo.workflows import load_model
from zoo.workflows import parse_kwargs




def test_train_sample_eval_and_resume(capsys, tmp_path):
    out = tmp_path / "run"
    common = ["--set", "data=swiss-roll", "--set", "arch=mlp", "--set", "T=50", "--set", "schedule=cosine",
              "--train", "batch_size=128", "--train", "lr=3e-3", "--limit", "1024", "--out", str(out)]
    run_zoo(capsys, "train", "gaussian", *common, "--train", "epochs=2")
    assert (out / "train.ckpt").exists() and json.loads((out / "summary.json").read_text())["steps"] == 16
    run_zoo(capsys, "train", "gaussian", *common, "--train", "epochs=4", "--resume")
    assert json.loads((out / "summary.json").read_text())["steps"] == 32  # continued, not restarted

    run_zoo(capsys, "sample", str(out / "train.ckpt"), "-n", "64", "--kw", "sampler=ddim", "--kw", "steps=10",
         "--out", str(tmp_path / "s.png"))
    samples = torch.load(tmp_path / "s.pt", weights_only=True)
    assert samples.shape == (64, 2) and (tmp_path / "s.png").stat().st_size > 1000

    res = json.loads(run_zoo(capsys, "eval", str(out / "train.ckpt"), "--n-samples", "200", "--n-test", "200",
                          "--kw", "sampler=ddim", "--kw", "steps=10"))
    assert res["formulation"] == "gaussian" and res["n_test"] == 200 and res["nfe"] == 10
    # The reported -ELBO is the model's bound on the first 200 test points with the evaluation's seed 0
    # ...
    _, _, model = load_model(out / "train.ckpt")
    x0 = load_dataset("swiss-roll", "test", limit=200, seed=0)[0]
    assert res["nll_nats"] == pytest.approx(model.nll((x0,), generator=torch.Generator().manual_seed(0)).mean().item(),
                                            rel=1e-9)
    # ... and that bound, per example, equals an independent float64 computation from the betas alone
    # (Ho et al. eq. 5, reverse variance beta_t, Gaussian decoder at t = 1) with the same draws of x_t
    # (one step per network call: noise drawn step by step).
    nll = model.nll((x0,), generator=torch.Generator().manual_seed(7), max_batch=len(x0))
    by_hand = _elbo_by_hand(model, x0, torch.Generator().manual_seed(7))
    torch.testing.assert_close(nll.double(), by_hand, rtol=1e-5, atol=1e-5)
    assert by_hand.std() > 0.1  # the examples differ: a per-example check, not one of a constant


@torch.no_grad()
def _elbo_by_hand(model, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """-ELBO per example (N,) from the betas alone: L_T + sum_{t >= 2} KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t)) + L_0."""
    betas = model.process.betas.double()
    T, alphas = len(betas), 1 - betas
    ab = torch.cumprod(alphas, 0)
    x0 = x0.double()
    total = 0.5 * ((1 - ab[-1]) + ab[-1] * x0 ** 2 - 1 - torch.log(1 - ab[-1])).sum(1)  # KL(q(x_T|x0) || N(0, I))
    for t in range(1, T + 1):
        i = t - 1
        eps = torch.randn(x0.shape, generator=gen)  # float32, as the data
        x_t = (ab[i].sqrt().float() * x0.float() + (1 - ab[i]).sqrt().float() * eps).double()
        tt = torch.full((len(x0),), t, dtype=torch.long)
        eps_hat = model.denoiser()(x_t.float(), tt).double()
        mu = (x_t - betas[i] / (1 - ab[i]).sqrt() * eps_hat) / alphas[i].sqrt()
        if t == 1:  # -log N(x0; mu, beta_1)
            total = total + 0.5 * (torch.log(2 * math.pi * betas[0]) + (x0 - mu) ** 2 / betas[0]).sum(1)
            continue
        mu_q = (ab[i - 1].sqrt() * betas[i] * x0 + alphas[i].sqrt() * (1 - ab[i - 1]) * x_t) / (1 - ab[i])
        var_q = (1 - ab[i - 1]) / (1 - ab[i]) * betas[i]
        total = total + 0.5 * (torch.log(betas[i] / var_q) + (var_q + (mu_q - mu) ** 2) / betas[i] - 1).sum(1)
    return total


def test_parse_kwargs():
    assert parse_kwargs(["a=1", "b=0.5", "c=ddim", "d=true", "e=none"]) == \
        {"a": 1, "b": 0.5, "c": "ddim", "d": True, "e": None}


def test_sliced_wasserstein_against_1d_closed_form():
    # Two 1-D point sets shifted by 0.7: every projection (+-1) gives W1 = 0.7.
    a = torch.linspace(-1, 1, 2001)[:, None]
    assert sliced_wasserstein(a, a + 0.7) == pytest.approx(0.7, abs=1e-6)
    assert sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-12)


def test_eval_of_a_conditional_mnist_model_reports_fid_and_agreement(capsys, fake_mnist, tmp_path):
    out = tmp_path / "cond"
    run_zoo(capsys, "train", "gaussian", "--set", "num_classes=10", "--set", "T=10", "--set", "channels=8,16",
         "--train", "max_steps=3", "--train", "batch_size=16", "--limit", "64", "--out", str(out))
    res = json.loads(run_zoo(capsys, "eval", str(out / "train.ckpt"), "--n-samples", "20", "--n-test", "4",
                          "--kw", "sampler=ddim", "--kw", "steps=5"))
    # Units: bits per dimension is nats / (784 ln 2), per example and so in the mean.
    assert res["bits_per_dim"] == pytest.approx(res["nll_nats"] / (784 * math.log(2)), rel=1e-9)
    assert res["nfe"] == 5 * 2  # guided: conditional and null rows in every step

    # Planted samples: the model "draws" real test digits of the label it is asked for (or of the next
    # label), so the reported agreement must be the classifier's accuracy on them (or near 0).
    for shift in (0, 1):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(GaussianDiffusion, "sample", lambda self, n, labels=None, **kw: _real_digits((labels + shift) % 10))
            res = json.loads(run_zoo(capsys, "eval", str(out / "train.ckpt"), "--n-samples", "40", "--n-test", "4"))
        asked = torch.arange(40) % 10  # evaluate asks for every class in turn
        shown = (_real_digits((asked + shift) % 10) + 1) / 2  # (40, 1, 28, 28) in [0, 1]
        expected = (classifier_predict(shown) == asked).double().mean().item()
        assert res["agreement"] == pytest.approx(expected, abs=1e-12)
        assert expected >= 0.9 if shift == 0 else expected <= 0.1


def _real_digits(labels: torch.Tensor) -> torch.Tensor:
    """Real MNIST test digits of the given labels (the i-th of each class in turn), grey view [-1, 1]."""
    images, digit = mnist_slice()
    of = {y: torch.nonzero(digit == y)[:, 0] for y in range(10)}
    pick = torch.stack([of[y][i % len(of[y])] for i, y in enumerate(labels.cpu().tolist())])
    return images[pick] * 2 - 1  # (n, 1, 28, 28)


def test_zoo_eval_samples_in_chunks_so_its_bar_shows_the_time_left_early():
    """On the CPU a tenth of n per chunk (at least 50, at most EvalConfig's 500); elsewhere 500."""
    from zoo.evaluation import EvalConfig
    from zoo.gaussian.model import Config, build
    from zoo.workflows import eval_chunk

    cpu = build(Config(data="mnist-grey", channels=(8, 16)))
    assert [eval_chunk(n, cpu) for n in (1, 30, 80, 1000, 2345, 10000)] == [1, 30, 50, 100, 235, 500]
    elsewhere = build(Config(data="mnist-grey", channels=(8, 16))).to("meta")  # stands in for a GPU
    assert [eval_chunk(n, elsewhere) for n in (30, 1000, 10000)] == [30, EvalConfig.sample_chunk, EvalConfig.sample_chunk]
