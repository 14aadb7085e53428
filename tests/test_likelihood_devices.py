"""Device mixing: the likelihoods and the hybrid loss run with the model and data on the meta device,
so any tensor created on the CPU inside them and combined with the data raises (STYLE 13)."""

from __future__ import annotations

import torch

from zoo.continuous_time.model import Config as VEConfig
from zoo.continuous_time.model import build as build_ve
from zoo.gaussian.model import Config, build


def _meta_images(n: int = 2) -> torch.Tensor:
    return torch.zeros(n, 1, 28, 28, device="meta")


def test_gaussian_likelihoods_and_hybrid_loss_on_meta():
    model = build(Config(arch="unet", channels=(8, 16), T=10, param="v", learn_variance=True,
                         t_sampling="importance", nll_variance="learned")).to("meta")
    x = _meta_images()
    out = model.loss((x,))
    assert out["loss"].device.type == "meta" and out["vlb"].device.type == "meta"
    out["loss"].backward()
    assert model.t_sampler.history.device.type == "meta"
    terms = model.ode_terms((x,), steps=2, hutchinson=True)
    assert all(v.device.type == "meta" for v in terms.values())
    for variance in ("learned", "beta"):
        assert model.nll((x,), variance=variance).device.type == "meta"
    assert model.sample(2, sampler="ddpm", variance="learned").device.type == "meta"


def test_gaussian_binary_elbo_and_exact_trace_on_meta():
    model = build(Config(data="mnist-binary", arch="unet", channels=(8, 16), T=4)).to("meta")
    assert model.nll((_meta_images(),)).device.type == "meta"
    toy = build(Config(data="swiss-roll", arch="mlp", hidden=8, layers=1, T=4)).to("meta")
    assert toy.ode_nll((torch.zeros(3, 2, device="meta"),), steps=2, hutchinson=False).device.type == "meta"


def test_ve_ode_nll_on_meta():
    model = build_ve(VEConfig(data="mnist-grey", channels=(8, 16), embed_dim=16)).to("meta")
    assert model.nll((_meta_images(),), steps=2).device.type == "meta"
