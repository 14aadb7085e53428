"""Classifier-free guidance in discrete diffusion (SPEC 11), bit-flip and absorbing: the guided
logits at w = 0 and w = 1 are exactly the unconditional and conditional ones, through every
sampler; label dropout; conditional models on the meta device; a tiny run where guidance steers."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.binary import absorbing as A
from zoo.binary import bitflip
from zoo.binary import absorbing_model, model as bitflip_model
from zoo.binary.guidance import drop_labels, guided, guided_logits, logits_for
from zoo.binary.schedules import ConfigError
from zoo.common.trainer import TrainConfig, Trainer

NUM_CLASSES = 3
TINY = dict(T=6, channels=(8, 16), embed_dim=16, groups=4)


def _table_fn(seed: int, m: int):
    """A class-conditional x0-model on m pixels: a random logit per (class or null, state, pixel)."""
    table = 2 * torch.randn(NUM_CLASSES + 1, 3 ** m, m, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)

    def fn(x_t, u, y):
        idx = ((x_t.long() + 1) * 3 ** torch.arange(m - 1, -1, -1)).sum(1)  # state row
        return table[y, idx]  # (B, m)
    return fn


def test_guided_logits_formula():
    g = torch.Generator().manual_seed(0)
    l_null, l_y = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    assert torch.equal(guided_logits(l_null, l_y, 0.0), l_null)
    assert torch.equal(guided_logits(l_null, l_y, 1.0), l_y)
    torch.testing.assert_close(guided_logits(l_null, l_y, 3.0), l_y + 2.0 * (l_y - l_null))


def test_guided_function_is_exactly_conditional_at_w1_and_unconditional_at_w0():
    fn = _table_fn(1, 3)
    x_t = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, -1.0, -1.0]])
    u = torch.full((4,), 0.5, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    null = torch.full((4,), NUM_CLASSES)
    assert torch.equal(guided(fn, labels, 1.0, NUM_CLASSES)(x_t, u), fn(x_t, u, labels))
    assert torch.equal(guided(fn, labels, 0.0, NUM_CLASSES)(x_t, u), fn(x_t, u, null))
    assert torch.equal(logits_for(fn, NUM_CLASSES)(x_t, u), fn(x_t, u, null))  # no labels: the null class
    with pytest.raises(ConfigError, match="unconditional"):
        logits_for(fn, 0, labels)


def test_absorbing_sampler_guided_at_w1_draws_exactly_the_conditional_chain():
    fn, n = _table_fn(2, 3), 20_000
    alphas = torch.tensor([1.0, 0.7, 0.35, 0.0], dtype=torch.float64)
    labels = torch.arange(n) % NUM_CLASSES
    for w, reference in ((1.0, labels), (0.0, torch.full((n,), NUM_CLASSES))):
        draws = []
        for f in (guided(fn, labels, w, NUM_CLASSES), lambda x, u: fn(x, u, reference)):
            g = torch.Generator().manual_seed(3)
            draws.append(A.ancestral_sample(f, A.all_masked((n, 3)), alphas, generator=g))
        assert torch.equal(draws[0], draws[1]), w


@pytest.mark.parametrize("param", ["posterior", "x0"])
def test_bitflip_guidance_on_the_network_logits(param):
    model = bitflip_model.build(bitflip_model.Config(parameterisation=param, num_classes=NUM_CLASSES, **TINY))
    torch.nn.init.normal_(model.net.out[-1].weight, std=0.3)  # a non-trivial, label-dependent output
    torch.nn.init.normal_(model.net.class_embed.weight, std=1.0)
    g = torch.Generator().manual_seed(4)
    y_t = bitflip.fair_coins((4, 1, 28, 28), generator=g)
    t = torch.tensor([1, 2, 4, 6])
    labels = torch.tensor([0, 1, 2, 1])
    null = torch.full((4,), NUM_CLASSES)
    with torch.no_grad():
        cond, uncond = model.logits(y_t, t, labels), model.logits(y_t, t, null)
        assert (cond - uncond).abs().max() > 0.1  # the label matters
        torch.testing.assert_close(model.logits_fn(labels, 1.0)(y_t, t), cond, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.logits_fn(labels, 0.0)(y_t, t), uncond, rtol=0, atol=1e-5)
        # w = 2 acts on the network output: for x0 before the posterior is formed.
        net = lambda y: model.net_logits(y_t, t, y)  # noqa: E731
        expected = model._to_logits(2 * net(labels) - net(null), y_t, t, model.deltas)
        torch.testing.assert_close(model.logits_fn(labels, 2.0)(y_t, t), expected, rtol=0, atol=1e-4)
        # The sampler with w = 1 draws the conditional chain (same coins, same draws).
        a = model.sample(4, generator=torch.Generator().manual_seed(5), labels=labels, w=1.0)
        gen = torch.Generator().manual_seed(5)
        y_T = bitflip.fair_coins((4, 1, 28, 28), generator=gen)
        b = bitflip.ancestral_sample(lambda y, s: model.logits(y, s, labels), y_T, model.T, generator=gen)
        assert torch.equal(a, b)


def test_absorbing_model_guidance_matches_conditional_sampling():
    model = absorbing_model.build(absorbing_model.Config(num_classes=NUM_CLASSES, **TINY))
    torch.nn.init.normal_(model.net.out[-1].weight, std=0.3)
    torch.nn.init.normal_(model.net.class_embed.weight, std=1.0)
    labels = torch.tensor([2, 0, 1, 1])
    a = model.sample(4, generator=torch.Generator().manual_seed(6), labels=labels, w=1.0)
    b = A.ancestral_sample(lambda x, u: model.x0_logits(x, u, labels), A.all_masked((4, 1, 28, 28)), model.alphas,
                           generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)


def test_label_dropout_rate():
    y = torch.randint(0, 10, (200_000,))
    dropped = drop_labels(y, 0.3, 10)
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])
    assert abs((~kept).double().mean().item() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / len(y))


def test_unconditional_bitflip_is_unchanged():
    model = bitflip_model.build(bitflip_model.Config(**TINY))
    assert not any("class_embed" in k for k in model.state_dict())
    with pytest.raises(ConfigError, match="unconditional"):
        model.sample(2, labels=torch.tensor([0, 1]))


def test_conditional_bitflip_on_the_meta_device():
    model = bitflip_model.build(bitflip_model.Config(parameterisation="x0", num_classes=NUM_CLASSES, **TINY))
    model = model.to("meta")
    batch = (torch.empty(4, 1, 28, 28, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"))
    assert model.loss(batch)["loss"].device.type == "meta"
    assert model.nll(batch).device.type == "meta"
    assert model.sample(2, w=2.0).device.type == "meta"


def _halves(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of binary images: class 0 lights a bar in the top half, class 1 in the bottom half."""
    y = torch.arange(n) % 2
    x = -torch.ones(n, 1, 28, 28)
    for i in range(n):
        r = 4 if y[i] == 0 else 18
        x[i, 0, r:r + 6, 4:24] = 1
    return x, y


def test_guidance_steers_a_tiny_trained_absorbing_model(tmp_path):
    torch.manual_seed(0)
    model = absorbing_model.AbsorbingDiffusion(absorbing_model.Config(num_classes=2, label_dropout=0.2, **TINY))
    Trainer(model, _halves(128), TrainConfig(epochs=6, batch_size=16, lr=3e-3, progress=False),
            out_dir=tmp_path).fit()
    labels = torch.arange(64) % 2

    def agreement(w: float) -> float:
        x = model.sample(64, labels=labels, w=w, generator=torch.Generator().manual_seed(7))
        top = x[:, 0, :14].mean((1, 2)) > x[:, 0, 14:].mean((1, 2))
        return (top == (labels == 0)).double().mean().item()

    conditional, unconditional = agreement(1.0), agreement(0.0)
    assert conditional >= 0.9, conditional
    assert unconditional <= 0.75, unconditional  # w = 0 ignores the label: about half agree
