"""Bit-flip diffusion: closed forms against brute-force enumeration of the chain, the loss
identities, the exact ELBO of a tiny model, the sampler, and a tiny training run."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from zoo.evaluation import draw
import torch.nn.functional as F

from zoo.binary import bitflip
from zoo.binary.model import BitFlipDiffusion, Config, build
from zoo.binary.schedules import constant_for_kappa_T, make_deltas
from zoo.common.trainer import TrainConfig, Trainer



DELTAS = torch.tensor([0.02, 0.11, 0.05, 0.3, 0.17, 0.5], dtype=torch.float64)  # non-constant, ends at 1/2


def _flip_prob(a: int, b: int, delta: float) -> float:
    return delta if a != b else 1 - delta


def _path_prob(y0: int, path: tuple[int, ...], deltas) -> float:
    """q(y_1..y_n | y_0) of one pixel's path under independent flips."""
    prev, p = y0, 1.0
    for s, y in enumerate(path):
        p *= _flip_prob(prev, y, float(deltas[s]))
        prev = y
    return p


def test_kappas_match_the_chain():
    k = bitflip.kappas(DELTAS)
    assert k.shape == (len(DELTAS) + 1,) and k.dtype == torch.float64 and k[0] == 1
    for t in range(1, len(DELTAS) + 1):  # P(Y_t = Y_0) = (1 + kappa_t)/2, by enumerating all paths
        same = sum(_path_prob(1, p, DELTAS) for p in itertools.product((-1, 1), repeat=t) if p[-1] == 1)
        assert (1 + k[t].item()) / 2 == pytest.approx(same, abs=1e-14)
    assert k[-1] == 0  # a step with delta = 1/2 is a fair coin


def test_posterior_against_brute_force_enumeration():
    T = len(DELTAS)
    rows, expected = [], []
    for t, y_t, y0 in itertools.product(range(1, T + 1), (-1, 1), (-1, 1)):
        num = den = 0.0
        for path in itertools.product((-1, 1), repeat=t):  # (y_1, ..., y_t)
            if path[-1] != y_t:
                continue
            p = _path_prob(y0, path, DELTAS)
            den += p
            prev = y0 if t == 1 else path[-2]
            num += p * (prev == 1)
        rows.append((t, y_t, y0))
        expected.append(num / den)
    t, y_t, y0 = (torch.tensor(c) for c in zip(*rows))
    got = bitflip.posterior_plus(y_t.double(), y0.double(), t, DELTAS)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-13)
    assert torch.equal(got[t == 1], (1 + y0[t == 1].double()) / 2)  # hard label at t = 1


def test_posterior_on_images_broadcasts_t():
    g = torch.Generator().manual_seed(0)
    y0 = bitflip.fair_coins((3, 1, 4, 4), generator=g)
    y_t = bitflip.fair_coins((3, 1, 4, 4), generator=g)
    t = torch.tensor([1, 3, 6])
    p = bitflip.posterior_plus(y_t, y0, t, DELTAS)
    for i in range(3):
        torch.testing.assert_close(p[i], bitflip.posterior_plus(y_t[i:i + 1], y0[i:i + 1], int(t[i]), DELTAS)[0])


def test_q_sample_marginal():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    y0 = torch.ones(n, 1)
    for t in (1, 2, 4):
        y_t = bitflip.q_sample(y0, t, DELTAS, generator=g)
        p = (1 + bitflip.kappas(DELTAS)[t].item()) / 2
        se = math.sqrt(p * (1 - p) / n)
        assert abs((y_t == 1).double().mean().item() - p) < 5 * se
        assert set(y_t.unique().tolist()) <= {-1.0, 1.0}


def test_bce_minus_entropy_is_the_kl():
    g = torch.Generator().manual_seed(2)
    p = torch.rand(5, 30, generator=g, dtype=torch.float64)
    p[:, :3], p[:, 3:6] = 0.0, 1.0  # hard labels included
    logits = 3 * torch.randn(5, 30, generator=g, dtype=torch.float64)
    q = torch.sigmoid(logits)
    direct = (torch.special.xlogy(p, p) - p * torch.log(q)
              + torch.special.xlogy(1 - p, 1 - p) - (1 - p) * torch.log(1 - q)).sum(1)
    b = bitflip.bce(p, logits)
    torch.testing.assert_close(b, F.binary_cross_entropy_with_logits(logits, p, reduction="none").sum(1))
    torch.testing.assert_close(b - bitflip.binary_entropy(p), direct)
    assert (direct > 0).all()


def test_step_terms_identity_and_t1_reconstruction():
    g = torch.Generator().manual_seed(3)
    y0 = bitflip.fair_coins((4, 1, 5, 5), generator=g)
    y_t = bitflip.fair_coins((4, 1, 5, 5), generator=g)
    logits = torch.randn(4, 1, 5, 5, generator=g)
    for t in (1, 2, 5):
        terms = bitflip.step_terms(logits, y_t, y0, t, DELTAS)
        torch.testing.assert_close(terms["kl"], terms["bce"] - terms["entropy"])
        assert (terms["kl"] >= 0).all()
    t1 = bitflip.step_terms(logits, y_t, y0, 1, DELTAS)
    assert torch.equal(t1["entropy"], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(t1["kl"], bitflip.reconstruction_nll(logits, y0))


def test_prior_kl_against_closed_form():
    g = torch.Generator().manual_seed(4)
    for deltas in (DELTAS[:4], make_deltas("constant", 30, delta=0.02), make_deltas("linear", 10)):
        y0 = bitflip.fair_coins((3, 1, 28, 28), generator=g)
        k = bitflip.kappas(deltas)[-1].item()
        expected = bitflip.prior_kl_closed_form(784, k)
        # one pixel by hand: KL(Bern((1+k)/2) || Bern(1/2))
        a = (1 + k) / 2
        assert expected == pytest.approx(784 * (a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))), rel=1e-12)
        torch.testing.assert_close(bitflip.prior_kl(y0, deltas), torch.full((3,), expected, dtype=torch.float64))
    assert bitflip.prior_kl(torch.ones(2, 7), DELTAS).abs().max() < 1e-15  # kappa_T = 0: no prior cost


def _exact_posterior_logits(y0: torch.Tensor, deltas: torch.Tensor):
    def logits_fn(y_t, t):  # elbo_all_t stacks the batch t-major: y0 repeated
        y0_rep = y0.repeat(y_t.shape[0] // y0.shape[0], *([1] * (y0.ndim - 1)))
        return torch.logit(bitflip.posterior_plus(y_t, y0_rep, t, deltas))  # +-inf at t = 1
    return logits_fn


def test_exact_posterior_model_has_zero_step_kl():
    g = torch.Generator().manual_seed(5)
    y0 = bitflip.fair_coins((6, 1, 28, 28), generator=g)
    fn = _exact_posterior_logits(y0, DELTAS)
    for t in range(1, len(DELTAS) + 1):
        y_t = bitflip.q_sample(y0, t, DELTAS, generator=g)
        kl = bitflip.step_terms(fn(y_t, torch.full((6,), t)), y_t, y0, t, DELTAS)["kl"]
        assert kl.abs().max() < 1e-10, t
    res = bitflip.elbo_all_t(fn, y0, DELTAS, generator=g)
    assert res["total"].abs().max() < 1e-9  # kappa_T = 0: no prior term either
    # The x0 option with a (nearly) certain, correct Y_0 prediction gives the same Q_t.
    for t in range(1, len(DELTAS) + 1):
        y_t = bitflip.q_sample(y0, t, DELTAS, generator=g)
        logits = bitflip.x0_to_logits(40.0 * y0, y_t, t, DELTAS)
        assert bitflip.step_terms(logits, y_t, y0, t, DELTAS)["kl"].abs().max() < 1e-12


def test_x0_marginalisation():
    g = torch.Generator().manual_seed(6)
    x0_logits = torch.randn(4, 9, generator=g, dtype=torch.float64)
    y_t = bitflip.fair_coins((4, 9), generator=g).double()
    pi = torch.sigmoid(x0_logits)
    for t in (1, 2, 6):
        q = torch.sigmoid(bitflip.x0_to_logits(x0_logits, y_t, t, DELTAS))
        mix = (pi * bitflip.posterior_plus(y_t, torch.ones_like(y_t), t, DELTAS)
               + (1 - pi) * bitflip.posterior_plus(y_t, -torch.ones_like(y_t), t, DELTAS))
        torch.testing.assert_close(q, mix, rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.sigmoid(bitflip.x0_to_logits(x0_logits, y_t, 1, DELTAS)), pi)


# --------------------------------------------------------------------------- a tiny exact case


STATES = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=2)), dtype=torch.float64)  # (4, m=2)
TINY_DELTAS = torch.tensor([0.1, 0.25, 0.15], dtype=torch.float64)  # T = 3


def _table_model(seed: int, T: int):
    """An arbitrary reverse model on m = 2 pixels: a random logit per (t, state of Y_t, pixel)."""
    table = 2 * torch.randn(T, 4, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def logits_fn(y_t, t):
        idx = ((y_t[:, 0] > 0).long() * 2 + (y_t[:, 1] > 0).long())  # row of STATES
        return table[t - 1, idx]  # (B, 2)
    return logits_fn


def _brute_force_neg_elbo(y0: torch.Tensor, logits_fn, deltas) -> float:
    """E_q[log q(y_{1:T} | y_0) - log p(y_{0:T})] by enumerating every path y_1..y_T."""
    T, total = len(deltas), 0.0
    for path in itertools.product(range(4), repeat=T):
        ys = [y0] + [STATES[i] for i in path]
        log_q = sum(math.log(_flip_prob(int(a), int(b), float(deltas[s])))
                    for s in range(T) for a, b in zip(ys[s], ys[s + 1]))
        log_p = 2 * math.log(0.5)  # Y_T fair coins
        for t in range(1, T + 1):
            q = torch.sigmoid(logits_fn(ys[t][None], torch.tensor([t])))[0]
            log_p += sum(math.log(qj if yj > 0 else 1 - qj) for qj, yj in zip(q.tolist(), ys[t - 1].tolist()))
        total += math.exp(log_q) * (log_q - log_p)
    return total


@pytest.mark.parametrize("y0_index", range(4))
def test_tiny_elbo_against_path_enumeration(y0_index):
    y0 = STATES[y0_index]
    fn = _table_model(7, len(TINY_DELTAS))
    brute = _brute_force_neg_elbo(y0, fn, TINY_DELTAS)
    # The decomposition with every expectation over Y_t taken exactly.
    decomposed = bitflip.prior_kl(y0[None], TINY_DELTAS).item()
    for t in range(1, len(TINY_DELTAS) + 1):
        w = bitflip.q_plus(y0[None].expand(4, 2), t, TINY_DELTAS)
        w = torch.where(STATES > 0, w, 1 - w).prod(1)  # q(Y_t = state | y0), (4,)
        tt = torch.full((4,), t)
        kl = bitflip.step_terms(fn(STATES, tt), STATES, y0[None].expand(4, 2), tt, TINY_DELTAS)["kl"]
        decomposed += (w * kl).sum().item()
    assert decomposed == pytest.approx(brute, abs=1e-10)
    # The all-t and sampled-t estimators are unbiased for it.
    g = torch.Generator().manual_seed(8)
    y0s = y0[None].expand(40_000, 2).contiguous()
    for est in (bitflip.elbo_all_t(fn, y0s, TINY_DELTAS, generator=g, max_batch=1 << 17)["total"],
                bitflip.elbo_sampled_t(fn, y0s, TINY_DELTAS, generator=g)):
        se = est.std().item() / math.sqrt(len(est))
        assert abs(est.mean().item() - brute) < 5 * se + 1e-12


def test_ancestral_sampler_matches_the_model_marginal():
    fn = _table_model(9, len(TINY_DELTAS))
    T = len(TINY_DELTAS)
    # p(Y_0) of the model by enumerating Y_T..Y_0.
    probs = torch.zeros(4, dtype=torch.float64)
    for path in itertools.product(range(4), repeat=T + 1):  # (y_T, ..., y_0)
        p = 0.25
        for k in range(T):
            t = T - k
            q = torch.sigmoid(fn(STATES[path[k]][None], torch.tensor([t])))[0]
            nxt = STATES[path[k + 1]]
            p *= torch.where(nxt > 0, q, 1 - q).prod().item()
        probs[path[-1]] += p
    g = torch.Generator().manual_seed(10)
    n, seen = 100_000, []
    y = bitflip.ancestral_sample(fn, bitflip.fair_coins((n, 2), generator=g).double(), T, generator=g,
                                 callback=lambda t, y: seen.append(t))
    assert seen == [2, 1, 0]
    idx = (y[:, 0] > 0).long() * 2 + (y[:, 1] > 0).long()
    freq = torch.bincount(idx, minlength=4).double() / n
    se = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() < 5 * se).all(), (freq, probs)


# --------------------------------------------------------------------------- schedules and model


def test_schedules_and_validation():
    assert bitflip.kappas(make_deltas("cosine", 20))[-1].abs() < 1e-12
    d = constant_for_kappa_T(50, 1e-3)
    assert bitflip.kappas(make_deltas("constant", 50, delta=d))[-1].item() == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        make_deltas("exp", 10)
    with pytest.raises(ValueError, match=r"\(0, 0.5\]"):
        make_deltas("constant", 10, delta=0.7)
    with pytest.raises(ValueError, match="posterior, x0"):
        build(Config(parameterisation="eps"))
    with pytest.raises(ValueError, match="binary data"):
        build(Config(data="mnist-grey"))


TINY = dict(T=8, channels=(8, 16), embed_dim=16, groups=4)


@pytest.mark.parametrize("param", ["posterior", "x0"])
def test_model_interface(param):
    torch.manual_seed(0)
    model = build(Config(parameterisation=param, **TINY))
    y0 = bitflip.fair_coins((3, 1, 28, 28))
    out = model.loss((y0,))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["kl"] >= 0
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    nll = model.nll((y0,))
    assert nll.shape == (3,) and torch.isfinite(nll).all()
    # An untrained model (zero-initialised output layer) says Q_t = 1/2 under `posterior`.
    if param == "posterior":
        el = model.elbo((y0,))
        assert el["kl"][:, 0].allclose(torch.full((3,), 784 * math.log(2), dtype=torch.float64))
    out = draw(model, 2, generator=torch.Generator().manual_seed(0))
    s = out.x
    assert s.shape == (2, 1, 28, 28) and set(s.unique().tolist()) <= {-1.0, 1.0}
    assert out.nfe == 8  # counted on the network: one call per step


def _blocks(n: int, seed: int = 0) -> torch.Tensor:
    """Binary images: a filled rectangle at a random place (n, 1, 28, 28) in {-1, +1}."""
    g = torch.Generator().manual_seed(seed)
    x = -torch.ones(n, 1, 28, 28)
    for i in range(n):
        r, c = torch.randint(2, 14, (2,), generator=g).tolist()
        x[i, 0, r:r + 12, c:c + 10] = 1
    return x


def test_tiny_training_learns(tmp_path):
    torch.manual_seed(0)
    data, test = _blocks(128), _blocks(32, seed=1)
    model = BitFlipDiffusion(Config(parameterisation="x0", **TINY))
    g = torch.Generator().manual_seed(0)
    before = model.nll((test,), generator=g).mean().item()
    tr = Trainer(model, (data,), TrainConfig(epochs=10, batch_size=16, lr=3e-3, log_every=1, progress=False),
                 out_dir=tmp_path)
    tr.fit()
    epochs = [r for r in tr.history if r["kind"] == "epoch"]
    # The BCE carries the targets' irreducible entropy; its reducible part, the KL, must fall.
    assert epochs[-1]["train_kl"] < 0.3 * epochs[0]["train_kl"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    after = model.nll((test,), generator=torch.Generator().manual_seed(0)).mean().item()
    assert after < 0.3 * before, (before, after)  # all-t ELBO on held-out images, ~620 -> ~85 nats
