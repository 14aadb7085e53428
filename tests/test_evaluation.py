"""zoo.evaluation: one NFE counter for every formulation, sample(x_T), likelihood terms, zoo eval on an
experiment's checkpoint, and a Trainer step budget."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.binary.model import BitFlipDiffusion, Config as BinaryConfig
from zoo.common.trainer import TrainConfig
from zoo.continuous_time.model import Config as VEConfig, VEDiffusion
from zoo.evaluation import EvalConfig, NFECounter, draw, evaluate, likelihood
from zoo.gaussian.model import Config as GaussianConfig, GaussianDiffusion
from zoo.runs import train
from zoo.vae.model import VAE, Config as VAEConfig

SMALL_UNET = dict(channels=(8, 16))


def test_nfe_counts_network_rows_for_every_formulation():
    torch.manual_seed(0)
    g = GaussianDiffusion(GaussianConfig(T=20, **SMALL_UNET))
    assert draw(g, 3, 2, sampler="ddpm").nfe == 20  # one call per step, whatever the chunking
    assert draw(g, 3, 3, sampler="ddim", steps=5).nfe == 5
    assert draw(g, 2, sampler="ode", steps=4, method="heun").nfe == 2 * 4 - 2
    cond = GaussianDiffusion(GaussianConfig(T=20, num_classes=10, **SMALL_UNET))
    assert draw(cond, 4, sampler="ddim", steps=5, w=2.0).nfe == 10  # guided: null + conditional rows
    ve = VEDiffusion(VEConfig(data="spiral", dt=0.1, hidden=16, layers=2))
    assert draw(ve, 5).nfe == 10  # 1/dt steps
    assert draw(BitFlipDiffusion(BinaryConfig(T=3, channels=(4, 8), embed_dim=8, groups=4)), 2).nfe == 3
    vae = VAE(VAEConfig(latent_dim=2, hidden=8, channels=(4, 8)))
    with NFECounter(vae) as counter:
        vae.sample(6)
    assert counter.per_sample(6) == 1 and not vae.decoder._forward_hooks  # the hook is removed


def test_sample_takes_the_starting_noise():
    torch.manual_seed(0)
    g = GaussianDiffusion(GaussianConfig(T=20, **SMALL_UNET))
    x_T = torch.randn(4, 1, 28, 28)
    a = g.sample(4, x_T=x_T, sampler="ddim", steps=5)
    b = draw(g, 4, 2, x_T=x_T, sampler="ddim", steps=5).x  # chunked: slices of the same x_T
    assert torch.allclose(a, b, atol=1e-6)
    ve = VEDiffusion(VEConfig(data="spiral", dt=0.1, hidden=16, layers=2))
    x_1 = torch.randn(5, 2)
    assert torch.equal(ve.sample(5, x_T=x_1), ve.sample(5, x_1=x_1))
    # The exact denoiser of a point mass at 0 with the lambda rule lands on it: x_T is really used.
    vae = VAE(VAEConfig(latent_dim=2, hidden=8, channels=(4, 8)))
    z = torch.zeros(3, 2)
    assert torch.equal(vae.sample(3, x_T=z, mean=True), vae.sample(3, x_T=z, mean=True))


def test_likelihood_terms_add_up():
    torch.manual_seed(0)
    x = torch.where(torch.rand(6, 1, 28, 28) < 0.3, 1.0, -1.0)
    vae = VAE(VAEConfig(latent_dim=2, hidden=8, channels=(4, 8), iwae_k=50, elbo_samples=20))
    gen = torch.Generator().manual_seed(0)
    summary, per = likelihood(vae, (x,), chunk=4, generator=gen, terms=True)
    assert torch.allclose(per["elbo_total"], per["elbo_recon"] + per["elbo_kl"])
    assert summary["n_test"] == 6 and summary["elbo_nats"] == pytest.approx(per["elbo_total"].double().mean().item())
    assert summary["nll_nats"] == pytest.approx(per["nll"].double().mean().item()) and per["nll"].shape == (6,)
    assert summary["bits_per_dim"] == pytest.approx(summary["nll_nats"] / (784 * torch.log(torch.tensor(2.0)).item()))
    binary = BitFlipDiffusion(BinaryConfig(T=3, channels=(4, 8), embed_dim=8, groups=4))
    summary, per = likelihood(binary, (x,), chunk=4, terms=True)
    assert torch.equal(per["nll"], per["elbo_total"]) and len(summary["elbo_kl"]) == 3


def test_progress_bar_counts_network_evaluations_with_a_total_from_the_first_chunk(capsys):
    """Sampling and likelihoods show a bar (when asked, or on a terminal) in images through the network:
    DDPM with T = 20 on 5 samples in chunks of 2 is 100 evaluations, known once the first chunk is done;
    the VAE's IWAE with k = 50 on 6 test examples is 300 decoder evaluations."""
    torch.manual_seed(0)
    g = GaussianDiffusion(GaussianConfig(T=20, **SMALL_UNET))
    draw(g, 5, 2, sampler="ddpm")
    assert capsys.readouterr().err == ""  # not a terminal: no bar unless asked
    assert draw(g, 5, 2, sampler="ddpm", progress=True).nfe == 20
    err = capsys.readouterr().err
    assert "sampling 5" in err and "40.0/100" in err and "100/100" in err, err
    vae = VAE(VAEConfig(latent_dim=2, hidden=8, channels=(4, 8), iwae_k=50, elbo_samples=20))
    x = torch.where(torch.rand(6, 1, 28, 28) < 0.3, 1.0, -1.0)
    likelihood(vae, (x,), chunk=4, generator=torch.Generator().manual_seed(0), terms=True, progress=True)
    err = capsys.readouterr().err
    assert "-ELBO of 6 test examples" in err and "120/120" in err, err  # 20 draws of z per example
    assert "NLL of 6 test examples" in err and "300/300" in err, err
    assert not g.net._forward_hooks and not vae.decoder._forward_hooks  # the hooks are removed


def test_step_budget_and_checkpoint_meta(tmp_path):
    torch.manual_seed(0)
    model = GaussianDiffusion(GaussianConfig(data="swiss-roll", arch="mlp", hidden=16, layers=2, T=10))
    data = (torch.randn(100, 2),)
    trainer = train(model, data, TrainConfig(steps=7, batch_size=16, log_every=1), tmp_path, "t")
    assert trainer.step == 7 and trainer.total_steps == 7  # 100 // 16 = 6 per epoch: 2 epochs, stopped at 7
    ckpt = torch.load(tmp_path / "t.ckpt", weights_only=True)
    assert ckpt["meta"]["formulation"] == "gaussian" and ckpt["meta"]["config"]["data"] == "swiss-roll"


def test_zoo_eval_works_on_an_experiment_checkpoint(capsys, tmp_path):
    from experiments import run_experiment
    from zoo.cli import main

    run_experiment("toy2d", preset="smoke", out_dir=tmp_path, overrides=["train.epochs=1", "n_samples=64"])
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "mlp.ckpt"), "--n-samples", "50", "--n-test", "20"])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    res = json.loads(out.out)
    assert res["formulation"] == "gaussian" and res["nfe"] == 100 and res["n_test"] == 20
    assert res["nll_nats"] > 0 and res["sliced_wasserstein"] > 0


def test_evaluate_toy_model_directly():
    torch.manual_seed(0)
    model = GaussianDiffusion(GaussianConfig(data="spiral", arch="mlp", hidden=16, layers=2, T=10))
    res = evaluate(model, "spiral", EvalConfig(n_samples=40, sample_chunk=16, n_test=30, nll_chunk=8))
    assert res["n_test"] == 30 and res["nfe"] == 10 and res["sample_seconds_per_1000"] > 0
    assert res["sliced_wasserstein"] > 0 and "bits_per_dim" not in res
