"""Absorbing (masked) diffusion, the formulation (zoo/binary/absorbing_model.py): the trainer
interface, validation, the meta device, a tiny training run, `zoo train/sample/eval absorbing`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import run_zoo

from zoo.binary.absorbing_model import AbsorbingDiffusion, Config, build
from zoo.binary.schedules import ConfigError
from zoo.common.trainer import TrainConfig, Trainer
from zoo.evaluation import NFECounter
from zoo.formulations import load_dataset


def test_config_validation():
    with pytest.raises(ConfigError, match="linear, cosine, polynomial"):
        build(Config(schedule="exp"))
    with pytest.raises(ConfigError, match="continuous, discrete"):
        build(Config(loss="simple"))
    with pytest.raises(ConfigError, match="stratified, uniform"):
        build(Config(time_sampling="sobol"))
    with pytest.raises(ConfigError, match="mnist-binary, mnist-binary-static, mnist-binary-dynamic, mnist-binary-stochastic"):
        build(Config(data="mnist-grey"))
    with pytest.raises(ConfigError, match="steps in 1..T"):
        build(Config(T=10, steps=11))


TINY = dict(T=8, channels=(8, 16), embed_dim=16, groups=4)


@pytest.mark.parametrize("loss", ["continuous", "discrete"])
def test_model_interface(loss):
    model = build(Config(loss=loss, **TINY))
    x0 = torch.where(torch.rand(3, 1, 28, 28) < 0.3, 1.0, -1.0)
    out = model.loss((x0,))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The zero-initialised output layer says mu = 1/2 everywhere: every pixel costs log 2 once.
    terms = model.elbo_terms((x0,), generator=torch.Generator().manual_seed(0))
    assert terms["kl"].shape == (3, 8)
    torch.testing.assert_close(model.nll((x0,)), torch.full((3,), 784 * math.log(2), dtype=torch.float64),
                               rtol=0.05, atol=0)
    s = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (2, 1, 28, 28) and set(s.unique().tolist()) <= {-1.0, 1.0}
    seen = []
    model.sample(2, steps=3, callback=lambda s, x: seen.append((s, (x == 0).float().mean().item())))
    assert [s for s, _ in seen] == [5, 3, 0] and seen[-1][1] == 0  # trailing_steps(8, 3) = 8, 5, 3
    with NFECounter(model) as counter:  # one network evaluation per step taken: T by default, `steps` if set
        model.sample(2)
    assert counter.per_sample(2) == 8
    with NFECounter(model) as counter:
        model.sample(2, steps=3)
    assert counter.per_sample(2) == 3


def test_model_on_the_meta_device_creates_no_cpu_tensor():
    for cfg in (Config(**TINY), Config(loss="discrete", num_classes=3, **TINY)):
        model = build(cfg).to("meta")
        x0 = torch.empty(4, 1, 28, 28, device="meta")
        batch = (x0, torch.zeros(4, dtype=torch.long, device="meta"))
        assert model.loss(batch)["loss"].device.type == "meta"
        assert model.nll(batch).shape == (4,) and model.nll(batch).device.type == "meta"
        s = model.sample(2, steps=4, w=2.0 if cfg.num_classes else 1.0)
        assert s.device.type == "meta" and s.shape == (2, 1, 28, 28)


def test_tiny_training_on_fake_mnist_lowers_the_elbo(fake_mnist, tmp_path):
    torch.manual_seed(0)
    train = load_dataset("mnist-binary", "train", limit=128)
    test = load_dataset("mnist-binary", "test", limit=32)
    model = AbsorbingDiffusion(Config(num_classes=10, **TINY))
    before = model.nll(test, generator=torch.Generator().manual_seed(0)).mean().item()
    tr = Trainer(model, train, TrainConfig(epochs=8, batch_size=16, lr=3e-3, log_every=1, progress=False),
                 out_dir=tmp_path)
    tr.fit()
    epochs = [r for r in tr.history if r["kind"] == "epoch"]
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    after = model.nll(test, generator=torch.Generator().manual_seed(0)).mean().item()
    assert after < 0.3 * before, (before, after)  # all-t ELBO on held-out images, 543 nats at init
    s = model.sample(10, labels=torch.arange(10), w=2.0, generator=torch.Generator().manual_seed(0))
    assert set(s.unique().tolist()) <= {-1.0, 1.0}




def test_zoo_train_sample_eval_absorbing(capsys, fake_mnist, tmp_path):
    out = tmp_path / "abs"
    run_zoo(capsys, "train", "absorbing", "--set", "num_classes=10", "--set", "T=6", "--set", "channels=8,16",
         "--train", "max_steps=2", "--train", "batch_size=16", "--limit", "64", "--out", str(out))
    run_zoo(capsys, "sample", str(out / "train.ckpt"), "-n", "4", "--kw", "w=2", "--kw", "steps=3",
         "--out", str(tmp_path / "s.png"))
    assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (4, 1, 28, 28)
    res = json.loads(run_zoo(capsys, "eval", str(out / "train.ckpt"), "--n-samples", "20", "--n-test", "4"))
    assert res["formulation"] == "absorbing" and 0 < res["nll_nats"] < 784 * math.log(2) * 1.1
    assert 0 <= res["agreement"] <= 1
