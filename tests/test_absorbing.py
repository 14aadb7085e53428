"""Absorbing (masked) diffusion, the mathematics (zoo/binary/absorbing.py): posterior and ELBO against
brute-force enumeration of the chain, the ELBO of exact conditionals against the data entropy, the
discrete-time ELBO against its continuous-time limit, the sampler, device handling of the tables."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from zoo.binary import absorbing as A
from zoo.binary.schedules import ConfigError, make_alphas, mask_schedule

ALPHAS = torch.tensor([1.0, 0.83, 0.6, 0.21, 0.0], dtype=torch.float64)  # T = 4, uneven steps


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name,kw", [("linear", {}), ("cosine", {}), ("polynomial", {"power": 3.0})])
def test_mask_schedules(name, kw):
    alphas = make_alphas(name, 50, **kw)
    assert alphas.dtype == torch.float64 and alphas.shape == (51,)
    assert alphas[0] == 1 and alphas[-1] == 0 and (alphas[1:] < alphas[:-1]).all()
    alpha, alpha_prime = mask_schedule(name, **kw)
    u = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6  # alpha' against a central difference of alpha
    torch.testing.assert_close(alpha_prime(u), (alpha(u + h) - alpha(u - h)) / (2 * h), rtol=1e-6, atol=1e-8)


def test_schedule_validation():
    with pytest.raises(ConfigError, match="linear, cosine, polynomial"):
        make_alphas("exp", 10)
    with pytest.raises(ConfigError, match="power > 0"):
        make_alphas("polynomial", 10, power=-1.0)
    with pytest.raises(ConfigError, match="T must be >= 1"):
        make_alphas("linear", 0)


def test_trailing_steps_equal_diffusers():
    for T, S in ((10, 3), (10, 10), (7, 2), (1000, 50), (5, 1)):
        diffusers = np.round(np.arange(T, 0, -T / S)).astype(np.int64)  # 'trailing', 1-based here
        assert A.trailing_steps(T, S) == diffusers.tolist()
    assert A.trailing_steps(4, 4) == [4, 3, 2, 1]


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    u = A.stratified_times(1000, generator=g)
    assert ((u > 0) & (u <= 1)).all()
    assert torch.equal(torch.sort(torch.floor((1 - u) * 1000)).values, torch.arange(1000, dtype=torch.float64))
    v = A.uniform_times(200_000, generator=g)
    assert ((v > 0) & (v <= 1)).all() and abs(v.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / 200_000)


# --------------------------------------------------------------------------- forward and posterior


def _q_step(prev: float, nxt: float, t: int, alphas) -> float:
    """One forward step of one pixel: unmasked stays with probability alpha_t/alpha_{t-1}, else M."""
    a = float(alphas[t]) / float(alphas[t - 1])
    if prev == A.MASK:
        return float(nxt == A.MASK)
    return a if nxt == prev else (1 - a if nxt == A.MASK else 0.0)


def test_posterior_against_bayes_by_enumerating_the_chain():
    T = len(ALPHAS) - 1
    for x0, t in itertools.product((-1.0, 1.0), range(1, T + 1)):
        for s in range(t):  # every earlier time: one step (s = t - 1) and jumps
            for x_t in (x0, A.MASK):
                joint = torch.zeros(3, dtype=torch.float64)  # P(x_s = state, x_t | x_0)
                for path in itertools.product((x0, A.MASK), repeat=t):  # (x_1, ..., x_t)
                    if path[-1] != x_t:
                        continue
                    states = (x0,) + path
                    p = math.prod(_q_step(states[k - 1], states[k], k, ALPHAS) for k in range(1, t + 1))
                    joint[int(states[s]) + 1] += p
                if joint.sum() == 0:
                    continue
                got = A.posterior(torch.tensor([x_t]), torch.tensor([x0]), t, ALPHAS, s=s)[0]
                torch.testing.assert_close(got, joint / joint.sum(), rtol=0, atol=1e-14)
    # The unmasking probability at s = t - 1 is SPEC 11's (alpha_{t-1} - alpha_t)/(1 - alpha_t).
    p = A.posterior(torch.zeros(T), torch.ones(T), torch.arange(1, T + 1), ALPHAS)[:, 2]
    torch.testing.assert_close(p, (ALPHAS[:-1] - ALPHAS[1:]) / (1 - ALPHAS[1:]))


def test_q_sample_marginal():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = -torch.ones(n, 1)
    for t in range(1, len(ALPHAS)):
        x_t = A.q_sample(x0, t, ALPHAS, generator=g)
        assert set(x_t.unique().tolist()) <= {-1.0, A.MASK}
        a = float(ALPHAS[t])
        assert abs((x_t == -1).double().mean().item() - a) <= 5 * math.sqrt(a * (1 - a) / n) + 1e-12


def test_reverse_probs_marginalise_the_posterior():
    g = torch.Generator().manual_seed(2)
    x_t = torch.tensor([[-1.0, 0.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
    logits = 2 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    pi = torch.sigmoid(logits)[..., None]
    for t in range(1, len(ALPHAS)):
        mix = (pi * A.posterior(x_t, torch.ones_like(x_t), t, ALPHAS)
               + (1 - pi) * A.posterior(x_t, -torch.ones_like(x_t), t, ALPHAS))
        got = A.reverse_probs(logits, x_t, t, ALPHAS)
        torch.testing.assert_close(got, mix, rtol=0, atol=1e-15)
        torch.testing.assert_close(got.sum(-1), torch.ones(3, 5, dtype=torch.float64))


# --------------------------------------------------------------------------- a tiny exact case


def _index(x: torch.Tensor) -> torch.Tensor:
    """Row of a state (B, m) with values in {-1, 0, +1} in itertools.product((-1, 0, 1), repeat=m)."""
    m = x.shape[1]
    return ((x.long() + 1) * 3 ** torch.arange(m - 1, -1, -1)).sum(1)


def _table_model(seed: int, m: int, T: int | None = None):
    """An arbitrary x0-model: a random logit per (state of x_t, pixel), and per step t if T is given
    (else time-independent)."""
    table = 2 * torch.randn(T or 1, 3 ** m, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def logits_fn(x_t, u):
        row = (u * T).round().long() - 1 if T else torch.zeros(len(x_t), dtype=torch.long)
        return table[row, _index(x_t)]  # (B, m)
    return logits_fn


def _brute_force_neg_elbo(x0: torch.Tensor, logits_fn, alphas) -> float:
    """E_q[log q(x_{1:T} | x_0) - log p(x_{0:T})] by enumerating every forward path x_1..x_T."""
    T, m, total = len(alphas) - 1, len(x0), 0.0
    pixel_paths = list(itertools.product((0, 1), repeat=T))  # 1 = masked at that step
    for paths in itertools.product(pixel_paths, repeat=m):
        xs = [x0] + [torch.tensor([A.MASK if paths[j][k] else float(x0[j]) for j in range(m)]) for k in range(T)]
        q = math.prod(_q_step(float(xs[k - 1][j]), float(xs[k][j]), k, alphas) for k in range(1, T + 1)
                      for j in range(m))
        if q == 0:
            continue
        log_p = 0.0 if bool((xs[T] == A.MASK).all()) else -math.inf  # p(x_T) = all masked
        for t in range(T, 0, -1):  # p(x_{t-1} | x_t), pixel by pixel, from SPEC 11's definition
            a_s, a_t = float(alphas[t - 1]), float(alphas[t])
            pi = torch.sigmoid(logits_fn(xs[t][None], torch.tensor([t / T], dtype=torch.float64)))[0]
            for j in range(m):
                new, old = float(xs[t - 1][j]), float(xs[t][j])
                if old != A.MASK:
                    p = float(new == old)
                elif new == A.MASK:
                    p = (1 - a_s) / (1 - a_t)
                else:
                    p = (a_s - a_t) / (1 - a_t) * float(pi[j] if new > 0 else 1 - pi[j])
                log_p += math.log(p) if p > 0 else -math.inf
        total += q * (math.log(q) - log_p)
    return total


def _masks(m: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0, 1), repeat=m)), dtype=torch.bool)  # (2^m, m)


def _mask_probs(masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """P(mask pattern) when each pixel is masked with probability 1 - alpha, float64 (2^m,)."""
    a = torch.tensor(alpha, dtype=torch.float64)
    return torch.where(masks, 1 - a, a).prod(1)


def _exact_elbo(logits_fn, x0: torch.Tensor, alphas) -> float:
    """sum_t E_{x_t ~ q(x_t | x_0)} step_kl with the expectation over the 2^m masks taken exactly."""
    T, masks = len(alphas) - 1, _masks(len(x0))
    x_t = torch.where(masks, torch.zeros(()), x0.float())  # (2^m, m)
    total = 0.0
    for t in range(1, T + 1):
        a = float(alphas[t])
        w = _mask_probs(masks, a)  # q(x_t | x_0), (2^m,)
        u = torch.full((len(masks),), t / T, dtype=torch.float64)
        kl = A.step_kl(logits_fn(x_t, u), x_t, x0[None].expand_as(x_t), t, alphas)
        total += (w * kl).sum().item()
    return total


@pytest.mark.parametrize("m,x0", [(2, (1.0, -1.0)), (2, (1.0, 1.0)), (3, (-1.0, 1.0, 1.0))])
def test_elbo_against_path_enumeration(m, x0):
    alphas = ALPHAS[[0, 1, 3, 4]] if m == 3 else ALPHAS  # T = 3 for three pixels, 4 for two
    x0 = torch.tensor(x0)
    fn = _table_model(7 + m, m, T=len(alphas) - 1)
    brute = _brute_force_neg_elbo(x0, fn, alphas)
    assert _exact_elbo(fn, x0, alphas) == pytest.approx(brute, rel=1e-12)
    # The all-t and sampled-t estimators are unbiased for it.
    g = torch.Generator().manual_seed(8)
    x0s = x0[None].expand(40_000, m).contiguous()
    for est in (A.elbo_all_t(fn, x0s, alphas, generator=g, max_batch=1 << 18)["total"],
                A.elbo_sampled_t(fn, x0s, alphas, generator=g)):
        se = est.std().item() / math.sqrt(len(est))
        assert abs(est.mean().item() - brute) < 5 * se


def test_ancestral_sampler_matches_the_model_marginal():
    m, T = 2, len(ALPHAS) - 1
    fn = _table_model(9, m, T=T)
    states = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=m)))  # (9, m)
    for steps in (T, 2):  # every step, and the jump 4 -> 2 -> 0 of trailing_steps(4, 2)
        times = A.trailing_steps(T, steps) + [0]
        dist = torch.zeros(len(states), dtype=torch.float64)
        dist[_index(torch.zeros(1, m))] = 1.0  # x_T all masked
        for t, s in zip(times[:-1], times[1:]):  # p(x_s) = sum_{x_t} p(x_t) prod_j p(x_s^j | x_t), by hand
            a_s, a_t = float(ALPHAS[s]), float(ALPHAS[t])
            pi = torch.sigmoid(fn(states, torch.full((len(states),), t / T, dtype=torch.float64)))
            new = torch.zeros_like(dist)
            for i, j in itertools.product(range(len(states)), repeat=2):
                p = dist[i].item()
                for k in range(m):
                    old, nxt = states[i, k].item(), states[j, k].item()
                    if old != 0:
                        p *= float(nxt == old)
                    elif nxt == 0:
                        p *= (1 - a_s) / (1 - a_t)
                    else:
                        p *= (a_s - a_t) / (1 - a_t) * (pi[i, k].item() if nxt > 0 else 1 - pi[i, k].item())
                new[j] += p
            dist = new
        assert dist[(states == 0).any(1)].abs().max() < 1e-15  # nothing masked at t = 0
        g = torch.Generator().manual_seed(10)
        n, seen = 100_000, []
        x = A.ancestral_sample(fn, A.all_masked((n, m)), ALPHAS, steps=steps, generator=g,
                               callback=lambda s, x: seen.append(s))
        assert seen == times[1:]
        freq = torch.bincount(_index(x), minlength=len(states)).double() / n
        se = (dist * (1 - dist) / n).sqrt()
        assert ((freq - dist).abs() <= 5 * se + 1e-12).all(), (steps, freq, dist)


# --------------------------------------------------------------------------- exact conditionals


ALL = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=3)))  # (8, 3) the data states


def _exact_conditionals(P: torch.Tensor):
    """logits_fn with mu(x_0^j = +1 | x_t) = P(x_0^j = +1 | the unmasked pixels of x_t), by enumeration."""

    def logits_fn(x_t, u):
        consistent = ((x_t[:, None] == 0) | (x_t[:, None] == ALL[None])).all(-1)  # (B, 8)
        w = P[None] * consistent  # (B, 8)
        p_plus = (w[:, :, None] * (ALL[None] > 0)).sum(1) / w.sum(1, keepdim=True)  # (B, 3)
        return torch.logit(p_plus)
    return logits_fn


def _entropy(P: torch.Tensor) -> float:
    return -(P * P.log()).sum().item()


def _marginal_entropies(P: torch.Tensor) -> float:
    p = (P[:, None] * (ALL > 0)).sum(0)  # P(x_j = +1), (3,)
    return -(p * p.log() + (1 - p) * (1 - p).log()).sum().item()


def _expected_elbo(P: torch.Tensor, alphas) -> float:
    fn = _exact_conditionals(P)
    return sum(P[i].item() * _exact_elbo(fn, ALL[i], alphas) for i in range(len(ALL)))


CORRELATED = torch.tensor([0.30, 0.02, 0.05, 0.13, 0.04, 0.11, 0.03, 0.32], dtype=torch.float64)


def test_product_distribution_elbo_equals_entropy_for_every_T():
    p = torch.tensor([0.2, 0.7, 0.55], dtype=torch.float64)  # P(x_j = +1), independent pixels
    P = torch.where(ALL > 0, p, 1 - p).prod(1)
    for T in (1, 2, 5):
        assert _expected_elbo(P, make_alphas("cosine", T)) == pytest.approx(_entropy(P), abs=1e-12)


def test_correlated_elbo_is_above_the_entropy_and_falls_towards_it():
    H, H_marg = _entropy(CORRELATED), _marginal_entropies(CORRELATED)
    assert H_marg - H > 0.3  # strongly correlated pixels
    Ts = (1, 2, 4, 8, 16, 32)
    elbos = [_expected_elbo(CORRELATED, make_alphas("linear", T)) for T in Ts]
    assert elbos[0] == pytest.approx(H_marg, abs=1e-12)  # T = 1: all pixels unmasked at once
    for T, e in zip(Ts, elbos):
        assert e > H + 1e-6
        # Linear schedule: two pixels unmask in the same step with probability 1/T; without such a tie
        # the chain is an exact any-order autoregressive model (cost H), with one at most H_marg.
        assert e - H <= math.comb(3, 2) / T * (H_marg - H) + 1e-12
    assert all(b < a for a, b in zip(elbos, elbos[1:]))  # each grid refines the last


def _f_exact(logits_fn, x0: torch.Tensor, alpha: float) -> float:
    """E_{x ~ mask with alpha}[sum_masked -log mu_theta(x_0^j | x)], exactly over the masks."""
    masks = _masks(len(x0))
    x = torch.where(masks, torch.zeros(()), x0.float())
    w = _mask_probs(masks, alpha)
    return (w * A.masked_nll(logits_fn(x, torch.zeros(len(x), dtype=torch.float64)), x,
                             x0[None].expand_as(x))).sum().item()


def _quadrature_continuous(logits_fn, x0, schedule: str, n: int = 64) -> float:
    """integral_0^1 w(u) f(alpha(u)) du by n-point Gauss-Legendre with the library's weight."""
    alpha, alpha_prime = mask_schedule(schedule)
    nodes, weights = np.polynomial.legendre.leggauss(n)
    u = torch.tensor((nodes + 1) / 2, dtype=torch.float64)
    w = A.continuous_weight(alpha(u), alpha_prime(u))
    f = torch.tensor([_f_exact(logits_fn, x0, float(a)) for a in alpha(u)], dtype=torch.float64)
    return float((torch.tensor(weights / 2) * w * f).sum())


def _beta_closed_form(logits_fn, x0) -> float:
    """The continuous-time ELBO in closed form: with a time-independent model it is
    integral_0^1 g(a)/(1 - a) da (a = alpha, any schedule), g a polynomial over the masks M, so
    sum_M sum_{j in M} CE_j(M) B(m - |M| + 1, |M|), B(k + 1, l) = k! (l - 1)!/(k + l)!."""
    m, total = len(x0), 0.0
    for mask in _masks(m):
        k = int(mask.sum())
        if k == 0:
            continue
        x = torch.where(mask, torch.zeros(()), x0.float())[None]
        ce = A.masked_nll(logits_fn(x, torch.zeros(1, dtype=torch.float64)), x, x0[None]).item()
        total += ce * math.factorial(m - k) * math.factorial(k - 1) / math.factorial(m)
    return total


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_continuous_elbo_of_exact_conditionals_is_the_entropy(schedule):
    fn = _exact_conditionals(CORRELATED)
    cont = sum(CORRELATED[i].item() * _quadrature_continuous(fn, ALL[i], schedule) for i in range(8))
    assert cont == pytest.approx(_entropy(CORRELATED), abs=1e-10)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_discrete_elbo_tends_to_the_continuous_weighted_ce(schedule):
    x0 = torch.tensor([1.0, -1.0, 1.0])
    fn = _table_model(11, 3)  # arbitrary, time-independent
    C = _beta_closed_form(fn, x0)
    assert _quadrature_continuous(fn, x0, schedule) == pytest.approx(C, rel=1e-10)
    # |D(T) - C| <= max|h'| max_t(alpha_{t-1} - alpha_t)/2 with max|h'| <= (m - 1) sum_M CE(M):
    # D(T) is a Riemann sum of h(a) = g(a)/(1 - a), a polynomial, over the grid alpha_t.
    states = torch.where(_masks(3), torch.zeros(()), x0)  # x_t for every mask M, (8, 3)
    ce_all = A.masked_nll(fn(states, torch.zeros(8)), states, x0[None].expand_as(states)).sum().item()
    gaps = []
    for T in (4, 16, 64, 256):
        alphas = make_alphas(schedule, T)
        gap = abs(_exact_elbo(fn, x0, alphas) - C)
        assert gap <= (3 - 1) * ce_all * (alphas[:-1] - alphas[1:]).max().item() / 2 + 1e-12, (T, gap)
        gaps.append(gap)
    assert gaps[-1] < gaps[0] / 16


@pytest.mark.parametrize("u", [0.1, 0.5, 1.0])
def test_continuous_elbo_estimator_at_fixed_times(u):
    x0 = torch.tensor([1.0, -1.0, -1.0])
    fn = _table_model(12, 3)
    alpha, alpha_prime = mask_schedule("cosine")
    uu = torch.tensor([u], dtype=torch.float64)
    expected = (A.continuous_weight(alpha(uu), alpha_prime(uu)) * _f_exact(fn, x0, float(alpha(uu)))).item()
    n = 100_000
    est = A.continuous_elbo(fn, x0[None].expand(n, 3).contiguous(), uu.expand(n), alpha, alpha_prime,
                            generator=torch.Generator().manual_seed(13))
    assert abs(est.mean().item() - expected) <= 5 * est.std().item() / math.sqrt(n) + 1e-12


def test_free_functions_move_a_cpu_table_to_the_data_device():
    """The float64 table stays on the CPU, the data and the model live on `meta`: any CPU tensor met
    by a meta tensor raises, and indexing the CPU table with a meta index would return a CPU tensor."""
    x0 = torch.empty(3, 1, 4, 4, device="meta")
    t = torch.ones(3, dtype=torch.long, device="meta")
    fn = lambda x_t, u: x_t * u[:, None, None, None]  # noqa: E731
    alpha, alpha_prime = mask_schedule("cosine")
    outs = [A.q_sample(x0, t, ALPHAS), A.q_sample(x0, 2, ALPHAS), A.posterior(x0, x0, t, ALPHAS),
            A.reverse_probs(x0, x0, t, ALPHAS, s=0), A.step_kl(x0, x0, x0, t, ALPHAS),
            A.elbo_all_t(fn, x0, ALPHAS)["total"], A.elbo_sampled_t(fn, x0, ALPHAS),
            A.ancestral_sample(fn, A.all_masked((3, 1, 4, 4), device="meta"), ALPHAS, steps=2),
            A.continuous_elbo(fn, x0, A.stratified_times(3, device="meta"), alpha, alpha_prime)]
    assert all(o.device.type == "meta" for o in outs)
