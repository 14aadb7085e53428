"""Binarisation protocols (SPEC 11): threshold, static, dynamic, and the Trainer's batch transform."""

from __future__ import annotations

import torch

from zoo.binary.model import BitFlipDiffusion, Config as BinaryConfig
from zoo.common import data
from zoo.common.trainer import TrainConfig, Trainer


def test_threshold_is_deterministic_and_every_binary_name_loads(fake_mnist):
    a, _ = data.load_dataset("mnist-binary", "test", seed=0)
    b, _ = data.load_dataset("mnist-binary", "test", seed=5)
    unit, _ = data.load_mnist("test", view="unit")
    assert torch.equal(a, b) and torch.equal(a, torch.where(unit > 0.5, 1.0, -1.0))
    assert data.protocol("mnist-binary") == "threshold" and data.protocol("mnist-grey") is None
    for name in ("mnist-binary-static", "mnist-binary-dynamic", "mnist-binary-stochastic"):
        x, y = data.load_dataset(name, "test", limit=7)
        assert x.shape == (7, 1, 28, 28) and set(x.unique().tolist()) <= {-1.0, 1.0}, name
        assert data.is_binary(name)


def test_static_same_seed_same_draw_other_seed_other_draw(fake_mnist):
    s1 = data.load_dataset("mnist-binary-static", "train", seed=1)[0]
    s1b = data.load_dataset("mnist-binary-static", "train", seed=1)[0]
    s2 = data.load_dataset("mnist-binary-static", "train", seed=2)[0]
    assert torch.equal(s1, s1b) and not torch.equal(s1, s2)
    # the first n images get the same coins whatever the limit (test sets of any size agree)
    assert torch.equal(data.load_dataset("mnist-binary-static", "train", limit=13, seed=1)[0], s1[:13])
    # the older name is the static protocol, draw for draw; dynamic's test split is the static draw
    assert torch.equal(data.load_dataset("mnist-binary-stochastic", "train", seed=1)[0], s1)
    assert torch.equal(data.load_dataset("mnist-binary-dynamic", "test", seed=3)[0],
                       data.load_dataset("mnist-binary-static", "test", seed=3)[0])


def test_static_draw_is_bernoulli_of_the_grey_level(fake_mnist):
    """Over 200 seeds the share of +1 per pixel is the grey level: |mean - p| < 5 standard errors."""
    unit = data.load_mnist("test", view="unit", limit=4)[0]
    draws = torch.stack([data.load_dataset("mnist-binary-static", "test", limit=4, seed=s)[0] for s in range(200)])
    share = ((draws + 1) / 2).mean(0)
    se = (unit * (1 - unit) / 200).sqrt().clamp(min=1e-3)
    assert ((share - unit).abs() / se).max() < 5


def test_dynamic_redraws_every_epoch_and_repeats_for_the_same_seed_and_epoch(fake_mnist):
    (p, y), transform = data.training_set("mnist-binary-dynamic", seed=4)
    torch.testing.assert_close(p, data.load_mnist("train", view="unit")[0])  # probabilities, not a draw
    batch = (p[:32], y[:32])
    e0 = transform(batch, 0, 1)
    assert set(e0[0].unique().tolist()) <= {-1.0, 1.0} and torch.equal(e0[1], y[:32])
    assert torch.equal(e0[0], transform(batch, 0, 1)[0])  # the same (seed, epoch, batch)
    assert torch.equal(e0[0], data.DynamicBinarisation(4)(batch, 0, 1)[0])
    assert not torch.equal(e0[0], transform(batch, 1, 1)[0])  # another epoch
    assert not torch.equal(e0[0], data.DynamicBinarisation(5)(batch, 0, 1)[0])  # another seed
    rng = torch.get_rng_state()
    transform(batch, 2, 0)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG stream is untouched
    _, none = data.training_set("mnist-binary-static", seed=4)
    assert none is None


def _trainer(tmp_path, data_tuple, transform, max_steps=None):
    torch.manual_seed(0)
    model = BitFlipDiffusion(BinaryConfig(data="mnist-binary-dynamic", channels=(8, 16), T=5))
    cfg = TrainConfig(epochs=3, batch_size=50, lr=1e-3, val_every=0, log_every=1, max_steps=max_steps,
                      progress=False)
    return Trainer(model, data_tuple, cfg, out_dir=tmp_path, transform=transform)


def test_trainer_applies_the_transform_and_resumes_bit_identically(fake_mnist, tmp_path):
    (p, y), transform = data.training_set("mnist-binary-dynamic", limit=200, seed=0)
    seen = []
    model_transform = lambda batch, epoch, index: seen.append((epoch, index)) or transform(batch, epoch, index)  # noqa: E731
    full = _trainer(tmp_path / "full", (p,), model_transform)
    full.fit()
    assert seen == [(e, b) for e in range(3) for b in range(4)]  # every batch, numbered by (epoch, batch)
    # stop mid-epoch (step 6 of 4 per epoch), resume in a new Trainer, finish: the same weights, bit for bit
    part = _trainer(tmp_path / "part", (p,), transform, max_steps=6)
    part.fit()
    resumed = _trainer(tmp_path / "part", (p,), transform)
    resumed.resume()
    assert resumed.step == 6
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    losses = lambda t: [r["loss"] for r in t.history if r["kind"] == "step" and r["step"] > 6]  # noqa: E731
    assert losses(full) == losses(resumed)
    # and the transform mattered: one fixed draw of the same images gives other weights
    static = _trainer(tmp_path / "static", (data.load_dataset("mnist-binary-static", limit=200)[0],), None)
    static.fit()
    assert not torch.equal(next(static.model.parameters()), next(full.model.parameters()))
