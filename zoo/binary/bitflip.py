"""Binary bit-flip diffusion: forward process, posterior, losses, ELBO, sampler (SPEC section 2).

Time convention: 1-based integer steps ``t = 1..T``; ``Y_0`` is the data, ``Y_T`` is (nearly)
``m`` fair coins. Pixels live in ``{-1, +1}`` and every function works elementwise on tensors of
any shape ``(B, ...)`` (images are ``(B, 1, 28, 28)``); per-example sums run over all but dim 0.

Symbols (the discrete HW's, ``../shared/seeds/004_...``):

=================  ==========================================================================
``deltas[t - 1]``  ``delta_t``: probability that step t flips a pixel
``kappas[t]``      ``kappa_t = prod_{s<=t} (1 - 2 delta_s)``, ``kappa_0 = 1``: probability that
                   a pixel has never been replaced by a fair coin after t steps
``rho``            ``P(Y_{t-1} = +1 | Y_0)`` = ``(1 + Y_0 kappa_{t-1}) / 2``
``Q_t``            the model's ``P_theta(Y_{t-1} = +1 | Y_t)``, given as logits
``logits_fn``      ``logits_fn(y_t, t) -> logits of Q_t``, ``t`` a long tensor (B,)
=================  ==========================================================================

Coefficients are float64; KL and ELBO terms are computed in float64 from the model's logits.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from zoo.common.utils import append_dims, rand, randint, step_tensor

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kappas(deltas: torch.Tensor) -> torch.Tensor:
    """kappa_t = prod_{s<=t} (1 - 2 delta_s) for t = 0..T (SPEC 2, closed form); kappas[0] = 1."""
    d = deltas.to(torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64, device=d.device), torch.cumprod(1 - 2 * d, 0)])


def q_plus(y0: torch.Tensor, t: torch.Tensor | int, deltas: torch.Tensor) -> torch.Tensor:
    """P(Y_t = +1 | Y_0) = (1 + Y_0 kappa_t)/2, elementwise, float64 (SPEC 2, closed form)."""
    kappa_t = kappas(deltas.to(y0.device))[step_tensor(t, y0)]  # (B,)
    return (1 + y0.double() * append_dims(kappa_t, y0.ndim)) / 2


def q_sample(y0: torch.Tensor, t: torch.Tensor | int, deltas: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw Y_t | Y_0 in one go (discrete HW 1b): keep Y_0[j] with probability kappa_t, else a fresh
    fair coin. Drawn as Y_t[j] = +1 with probability (1 + Y_0[j] kappa_t)/2, the same law."""
    u = rand(y0.shape, generator, y0.device, torch.float64)
    return torch.where(u < q_plus(y0, t, deltas), 1.0, -1.0).to(y0.dtype)


def posterior_plus(y_t: torch.Tensor, y0: torch.Tensor, t: torch.Tensor | int,
                   deltas: torch.Tensor) -> torch.Tensor:
    """P(Y_{t-1} = +1 | Y_t, Y_0), elementwise, float64 (SPEC 2; discrete HW 1d, eqs. 1 and 3).

    Bayes with the prior rho = (1 + Y_0 kappa_{t-1})/2 and one flip of probability delta_t;
    at t = 1 the target is the hard label (1 + Y_0)/2.
    """
    t = step_tensor(t, y_t)
    deltas = deltas.to(device=y_t.device, dtype=torch.float64)
    kappa_prev = append_dims(kappas(deltas)[t - 1], y_t.ndim)  # (B, 1, ..., 1)
    delta = append_dims(deltas[t - 1], y_t.ndim)
    rho = (1 + y0.double() * kappa_prev) / 2
    up = (1 - delta) * rho / ((1 - rho) * delta + (1 - delta) * rho)  # Y_t = +1
    down = delta * rho / (rho * delta + (1 - delta) * (1 - rho))  # Y_t = -1
    p = torch.where(y_t > 0, up, down)
    return torch.where(append_dims(t == 1, y_t.ndim), (1 + y0.double()) / 2, p)


def x0_to_logits(x0_logits: torch.Tensor, y_t: torch.Tensor, t: torch.Tensor | int,
                 deltas: torch.Tensor) -> torch.Tensor:
    """The x0-prediction option (SPEC 2): the network gives logits of pi = P(Y_0[j] = +1 | Y_t); then
    Q_t = pi P(+1 | Y_t, Y_0 = +1) + (1 - pi) P(+1 | Y_t, Y_0 = -1), pixel by pixel. Returned as
    the logits of Q_t, computed with log-sum-exp in float64 (exact at t = 1, where Q_1 = pi)."""
    log_pi, log_1mpi = F.logsigmoid(x0_logits.double()), F.logsigmoid(-x0_logits.double())
    p_pos = posterior_plus(y_t, torch.ones_like(y_t), t, deltas)
    p_neg = posterior_plus(y_t, -torch.ones_like(y_t), t, deltas)
    log_q = torch.logaddexp(log_pi + torch.log(p_pos), log_1mpi + torch.log(p_neg))
    log_1mq = torch.logaddexp(log_pi + torch.log1p(-p_pos), log_1mpi + torch.log1p(-p_neg))
    return log_q - log_1mq


def _times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a * b with 0 where a = 0 (so 0 * log 0 = 0 and 0 * -inf = 0)."""
    return torch.where(a == 0, torch.zeros_like(b), a * b)


def _per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)  # (B,)


def bce(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of Q = sigmoid(logits) against the target probability p, summed per
    example (B,): -sum_j [p log Q + (1 - p) log(1 - Q)] (SPEC 2, the training loss)."""
    logits = logits.double()
    return -_per_example(_times(p, F.logsigmoid(logits)) + _times(1 - p, F.logsigmoid(-logits)))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of the Bernoulli targets, summed per example (B,): -sum_j [p log p + (1-p) log(1-p)]."""
    return -_per_example(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def step_terms(logits: torch.Tensor, y_t: torch.Tensor, y0: torch.Tensor, t: torch.Tensor | int,
               deltas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The step-t ELBO term (SPEC 2): KL(P(Y_{t-1} | Y_t, Y_0) || Q_t) = BCE - H(target), per
    example (B,). At t = 1 the target is hard, H = 0, and KL = -log Q_1(Y_0)."""
    p = posterior_plus(y_t, y0, t, deltas)
    b, h = bce(p, logits), binary_entropy(p)
    return {"bce": b, "entropy": h, "kl": b - h}


def reconstruction_nll(logits: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """-log Q_1(Y_0) per example (B,): the t = 1 term of the ELBO."""
    return bce((1 + y0.double()) / 2, logits)


def prior_kl(y0: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """KL(q(Y_T | Y_0) || m fair coins) per example (B,), from q(Y_T = +1 | Y_0) = (1 + Y_0 kappa_T)/2."""
    p = q_plus(y0, len(deltas), deltas)
    return _per_example(torch.special.xlogy(p, 2 * p) + torch.special.xlogy(1 - p, 2 * (1 - p)))


def prior_kl_closed_form(m: int, kappa_T: float) -> float:
    """m [(1 + k)/2 log(1 + k) + (1 - k)/2 log(1 - k)], k = kappa_T: the prior term for m pixels,
    whatever Y_0 is (each pixel keeps its value with probability (1 + k)/2)."""
    k = torch.tensor(kappa_T, dtype=torch.float64)
    return float(m * ((1 + k) / 2 * torch.log1p(k) + torch.special.xlogy((1 - k) / 2, 1 - k)))


@torch.no_grad()
def elbo_all_t(logits_fn: LogitsFn, y0: torch.Tensor, deltas: torch.Tensor,
               generator: torch.Generator | None = None, max_batch: int = 2048) -> dict[str, torch.Tensor]:
    """The ELBO in nats per example, every t evaluated (SPEC 2 / 10, the headline):
    prior KL + sum_{t>=2} KL(posterior || Q_t) - log Q_1(Y_0), one draw Y_t ~ q(Y_t | Y_0) per t
    (an unbiased estimate of -ELBO, an upper bound on -log p(Y_0)). Network calls are batched over
    (t, example) pairs, at most `max_batch` inputs per call.

    Returns ``prior`` (B,), ``kl`` (B, T) with ``kl[:, t - 1]`` the step-t term (t = 1: the
    reconstruction term) and ``total`` (B,).
    """
    B, T = y0.shape[0], len(deltas)
    per_call = max(1, max_batch // B)
    kl = torch.empty(B, T, dtype=torch.float64, device=y0.device)
    for start in range(1, T + 1, per_call):
        ts = torch.arange(start, min(start + per_call, T + 1), device=y0.device)  # (n_t,)
        t_rep = ts.repeat_interleave(B)  # (n_t * B,), t-major
        y0_rep = y0.repeat(len(ts), *([1] * (y0.ndim - 1)))  # (n_t * B, ...)
        y_t = q_sample(y0_rep, t_rep, deltas, generator)
        terms = step_terms(logits_fn(y_t, t_rep), y_t, y0_rep, t_rep, deltas)["kl"]
        kl[:, ts - 1] = terms.view(len(ts), B).T  # (B, n_t)
    prior = prior_kl(y0, deltas)
    return {"prior": prior, "kl": kl, "total": prior + kl.sum(1)}


def elbo_sampled_t(logits_fn: LogitsFn, y0: torch.Tensor, deltas: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased one-t estimate of the ELBO of `elbo_all_t` (B,): prior KL + T * KL_t with
    t ~ Uniform{1..T} and Y_t ~ q(Y_t | Y_0), for training curves."""
    T = len(deltas)
    t = randint(1, T + 1, (y0.shape[0],), generator, y0.device)
    y_t = q_sample(y0, t, deltas, generator)
    return prior_kl(y0, deltas) + T * step_terms(logits_fn(y_t, t), y_t, y0, t, deltas)["kl"]


@torch.no_grad()
def ancestral_sample(logits_fn: LogitsFn, y_T: torch.Tensor, T: int,
                     generator: torch.Generator | None = None,
                     callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Ancestral sampling (discrete HW 1f): from Y_T (fair coins), for t = T..1 draw
    Y_{t-1}[j] = +1 with probability Q_t[j]; returns Y_0. `callback(t - 1, Y_{t-1})` sees each
    state. T network evaluations."""
    y = y_T
    for t in range(T, 0, -1):
        q = torch.sigmoid(logits_fn(y, torch.full((y.shape[0],), t, device=y.device, dtype=torch.long)).float())
        u = rand(y.shape, generator, y.device)
        y = torch.where(u < q, 1.0, -1.0).to(y_T.dtype)
        if callback is not None:
            callback(t - 1, y)
    return y


def fair_coins(shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """m i.i.d. fair +-1 coins per example: the prior Y_T."""
    return torch.where(rand(shape, generator, device) < 0.5, 1.0, -1.0)
