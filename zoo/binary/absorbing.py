"""Absorbing-state (masked) diffusion on binary images: forward masking, posterior, the exact
discrete-time ELBO, its continuous-time weighted cross-entropy form, the unmasking sampler (SPEC 11).

Time convention: 1-based steps ``t = 1..T``; ``x_0`` is the data, ``x_T`` is all masked. The
continuous time of step t is ``u = t/T`` in [0, 1]. States: pixels in ``{-1, +1}`` plus the mask
state ``M``, stored as the value ``MASK = 0``, so a state has the image's shape ``(B, 1, 28, 28)``
with values in ``{-1, 0, +1}``; every function works elementwise on tensors of any shape ``(B, ...)``
and per-example sums run over all but dim 0. Three-state distributions put the states on a last
axis in the order ``STATES = (-1, M, +1)``, so state index ``k`` holds the value ``k - 1``.

Symbols (Austin et al. 2021 "absorbing"; Sahoo et al. 2024, MDLM; Shi et al. 2024, MD4):

=====================  ====================================================================
``alphas[t]``          ``alpha_t``: P(x_t^j = x_0^j | x_0); else x_t^j = M. alpha_0 = 1,
                       alpha_T = 0, decreasing (zoo/binary/schedules.py, ``make_alphas``)
``alpha(u)``,          the continuous schedule and its derivative, ``alpha_t = alpha(t/T)``
``alpha_prime(u)``
``unmask``             ``(alpha_s - alpha_t)/(1 - alpha_t)``, s < t: the probability that a pixel
                       masked at t is unmasked (to x_0^j) at s; with s = t - 1 also the weight
                       of step t in the ELBO
``mu_theta``           the model's ``mu_theta(x_0^j | x_t)``, one Bernoulli per pixel given by
                       its logit (of x_0^j = +1)
``logits_fn``          ``logits_fn(x_t, u) -> x0 logits`` (shape of x_t), ``u`` a float tensor (B,)
``w(u)``               ``-alpha'(u)/(1 - alpha(u))``, the continuous-time weight
=====================  ====================================================================

Forward: ``q(x_t^j | x_0^j) = alpha_t [x_t^j = x_0^j] + (1 - alpha_t) [x_t^j = M]``, pixels
independent. Posterior (s = t - 1): an unmasked pixel stays; a masked one becomes x_0^j with
probability ``unmask``, else stays M. Reverse model: the posterior with x_0 ~ mu_theta, unmasked
pixels carried over (MDLM's "carry-over unmasking"). Exact discrete-time bound (alpha_T = 0: no
prior term; at t = 1, unmask = 1 and the term is the reconstruction -log p(x_0 | x_1)):

    -log p(x_0) <= sum_{t=1..T} E_q[ unmask_t sum_{j: x_t^j = M} -log mu_theta(x_0^j | x_t) ],

each summand being KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)). Continuous time (MD4 eq. 4,
MDLM eq. 10): ``integral_0^1 w(u) E[sum_masked -log mu_theta] du``, the T -> infinity limit.
Coefficients are float64; losses are computed in float64 from the model's logits.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from zoo.common.utils import append_dims, rand, randint, step_tensor

MASK = 0.0
STATES = (-1.0, MASK, 1.0)  # order of the last axis of three-state probabilities: value = index - 1

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AlphaFn = Callable[[torch.Tensor], torch.Tensor]


def _per_example(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)  # (B,)


def is_masked(x_t: torch.Tensor) -> torch.Tensor:
    """The boolean mask-indicator of a state (shape of x_t)."""
    return x_t == MASK


def mask_with(x0: torch.Tensor, alpha: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep each pixel of x0 with probability alpha (B,) (one per example), else M (SPEC 11, forward)."""
    u = rand(x0.shape, generator, x0.device, torch.float64)
    return torch.where(u < append_dims(alpha.to(x0.device), x0.ndim), x0, torch.zeros_like(x0))


def q_sample(x0: torch.Tensor, t: torch.Tensor | int, alphas: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t ~ q(x_t | x_0): each pixel kept with probability alpha_t, else M (SPEC 11)."""
    return mask_with(x0, alphas.to(x0.device)[step_tensor(t, x0)], generator)


def unmask_prob(alpha_s: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
    """(alpha_s - alpha_t)/(1 - alpha_t): P(x_s^j = x_0^j | x_t^j = M, x_0), s < t (SPEC 11 posterior)."""
    return (alpha_s - alpha_t) / (1 - alpha_t)


def _jump(x_t: torch.Tensor, t: torch.Tensor | int, alphas: torch.Tensor,
          s: torch.Tensor | int | None) -> torch.Tensor:
    """unmask_prob(alpha_s, alpha_t) per example, broadcast to x_t (s defaults to t - 1)."""
    t = step_tensor(t, x_t)
    s = t - 1 if s is None else step_tensor(s, x_t)
    a = alphas.to(device=x_t.device, dtype=torch.float64)
    return append_dims(unmask_prob(a[s], a[t]), x_t.ndim)  # (B, 1, ..., 1)


def _three_states(p_minus: torch.Tensor, p_mask: torch.Tensor, p_plus: torch.Tensor) -> torch.Tensor:
    return torch.stack([p_minus, p_mask, p_plus], dim=-1)  # (B, ..., 3)


def posterior(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int, alphas: torch.Tensor,
              s: torch.Tensor | int | None = None) -> torch.Tensor:
    """q(x_s | x_t, x_0) per pixel over STATES (..., 3), float64, s = t - 1 unless given (SPEC 11):
    an unmasked pixel stays; a masked one is x_0^j with probability unmask_prob, else M."""
    p = _jump(x_t, t, alphas, s)
    masked = is_masked(x_t)
    value = torch.where(masked, x0, x_t).double()
    to_value = torch.where(masked, p, 1.0)
    return _three_states(torch.where(value < 0, to_value, 0.0), torch.where(masked, 1 - p, 0.0),
                         torch.where(value > 0, to_value, 0.0))


def reverse_probs(x0_logits: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, alphas: torch.Tensor,
                  s: torch.Tensor | int | None = None) -> torch.Tensor:
    """p_theta(x_s | x_t) per pixel over STATES (..., 3), float64: the posterior with x_0^j ~ mu_theta
    (linear in x_0's one-hot, so the mixture replaces it by (1 - pi, pi), pi = sigmoid(logit));
    unmasked pixels carry over (SPEC 11)."""
    p = _jump(x_t, t, alphas, s)
    masked = is_masked(x_t)
    pi = torch.sigmoid(x0_logits.double())
    return _three_states(torch.where(masked, p * (1 - pi), (x_t < 0).double()), torch.where(masked, 1 - p, 0.0),
                         torch.where(masked, p * pi, (x_t > 0).double()))


def masked_nll(x0_logits: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """sum_{j: x_t^j = M} -log mu_theta(x_0^j | x_t) per example (B,), float64: the cross-entropy on
    the masked pixels; -log sigmoid(x_0 l) = softplus(-x_0 l) for x_0 in {-1, +1}."""
    nll = F.softplus(-x0.double() * x0_logits.double())
    return _per_example(torch.where(is_masked(x_t), nll, 0.0))


def step_kl(x0_logits: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int,
            alphas: torch.Tensor) -> torch.Tensor:
    """KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) per example (B,) (SPEC 11):
    unmask_t * masked_nll; at t = 1 (unmask_1 = 1) it is -log p_theta(x_0 | x_1)."""
    p = _jump(x_t, t, alphas, None).reshape(x_t.shape[0])  # (B,)
    return p * masked_nll(x0_logits, x_t, x0)


def _u(t: torch.Tensor, T: int) -> torch.Tensor:
    return t.double() / T  # (B,) continuous time of step t


@torch.no_grad()
def elbo_all_t(logits_fn: LogitsFn, x0: torch.Tensor, alphas: torch.Tensor,
               generator: torch.Generator | None = None, max_batch: int = 2048) -> dict[str, torch.Tensor]:
    """The discrete-time ELBO in nats per example, every t evaluated (SPEC 11): sum_t step_kl with one
    draw x_t ~ q(x_t | x_0) per t, an unbiased estimate of the bound on -log p(x_0). Network calls
    are batched over (t, example) pairs, at most `max_batch` inputs per call.

    Returns ``kl`` (B, T) with ``kl[:, t - 1]`` the step-t term and ``total`` (B,).
    """
    B, T = x0.shape[0], len(alphas) - 1
    per_call = max(1, max_batch // B)
    kl = torch.empty(B, T, dtype=torch.float64, device=x0.device)
    for start in range(1, T + 1, per_call):
        ts = torch.arange(start, min(start + per_call, T + 1), device=x0.device)  # (n_t,)
        t_rep = ts.repeat_interleave(B)  # (n_t * B,), t-major
        x0_rep = x0.repeat(len(ts), *([1] * (x0.ndim - 1)))  # (n_t * B, ...)
        x_t = q_sample(x0_rep, t_rep, alphas, generator)
        terms = step_kl(logits_fn(x_t, _u(t_rep, T)), x_t, x0_rep, t_rep, alphas)
        kl[:, ts - 1] = terms.view(len(ts), B).T  # (B, n_t)
    return {"kl": kl, "total": kl.sum(1)}


def elbo_sampled_t(logits_fn: LogitsFn, x0: torch.Tensor, alphas: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased one-t estimate of the discrete-time ELBO (B,): T * step_kl at t ~ Uniform{1..T}."""
    T = len(alphas) - 1
    t = randint(1, T + 1, (x0.shape[0],), generator, x0.device)
    x_t = q_sample(x0, t, alphas, generator)
    return T * step_kl(logits_fn(x_t, _u(t, T)), x_t, x0, t, alphas)


def continuous_weight(alpha: torch.Tensor, alpha_prime: torch.Tensor) -> torch.Tensor:
    """w(u) = -alpha'(u)/(1 - alpha(u)), the weight of the continuous-time ELBO (MD4 eq. 4)."""
    return -alpha_prime / (1 - alpha)


def continuous_elbo(logits_fn: LogitsFn, x0: torch.Tensor, u: torch.Tensor, alpha_fn: AlphaFn,
                    alpha_prime_fn: AlphaFn, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-sample estimate of the continuous-time ELBO (B,) at given times u (B,) in (0, 1] (SPEC 11,
    MD4/MDLM): w(u) sum_{j: x_u^j = M} -log mu_theta(x_0^j | x_u), x_u masked with alpha(u); with
    u ~ Uniform(0, 1] it is unbiased for integral_0^1 w(u) E[masked cross-entropy] du."""
    u = u.to(device=x0.device, dtype=torch.float64)
    alpha = alpha_fn(u)  # (B,)
    x_u = mask_with(x0, alpha, generator)
    return continuous_weight(alpha, alpha_prime_fn(u)) * masked_nll(logits_fn(x_u, u), x_u, x0)


def uniform_times(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """n i.i.d. times u ~ Uniform(0, 1] (float64; 1 - U[0, 1) so that w(u) stays finite)."""
    return 1 - rand((n,), generator, device, torch.float64)


def stratified_times(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """n times u_i = 1 - ((r + i/n) mod 1), r ~ U[0, 1): each marginally Uniform(0, 1], together
    one per stratum of width 1/n (the low-discrepancy sampler of Kingma et al. 2021 and MD4)."""
    r = rand((1,), generator, device, torch.float64)
    return 1 - torch.remainder(r + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)


def trailing_steps(T: int, steps: int) -> list[int]:
    """The S = `steps` sampler times t_i = round(T - i T/S), i = 0..S-1 (SPEC 11 ``trailing``, which
    starts at t_0 = T, the all-masked state), descending; S = T gives T, T-1, ..., 1."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in 1..{T}, got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    return [int(v) for v in torch.round(T - i * T / steps).tolist()]


def sample_states(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per pixel from three-state probabilities (..., 3) over STATES; returns values in
    {-1, 0 (M), +1} (float64), by inverting the cumulative distribution with one uniform per pixel."""
    u = rand(probs.shape[:-1], generator, probs.device, torch.float64)
    index = (u[..., None] >= probs.cumsum(-1)).sum(-1).clamp(max=2)  # (B, ...) in {0, 1, 2}
    return index.double() - 1


@torch.no_grad()
def ancestral_sample(logits_fn: LogitsFn, x_T: torch.Tensor, alphas: torch.Tensor, steps: int | None = None,
                     generator: torch.Generator | None = None,
                     callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Ancestral unmasking (SPEC 11; MD4 Alg. 2): from x_T (all M), over the times t_0 = T > ... >
    t_{S-1} of `trailing_steps` and then 0, draw x_s ~ p_theta(x_s | x_t) = the posterior with
    x_0 ~ mu_theta(. | x_t) for the masked pixels (unmask with probability (alpha_s - alpha_t)/
    (1 - alpha_t)), unmasked pixels kept; the last step (s = 0) unmasks every pixel. Returns x_0;
    `callback(s, x_s)` sees each state. S = `steps` (default T) network evaluations."""
    T = len(alphas) - 1
    ts = trailing_steps(T, steps or T) + [0]
    x = x_T
    for t, s in zip(ts[:-1], ts[1:]):
        u = torch.full((x.shape[0],), t / T, device=x.device, dtype=torch.float64)
        probs = reverse_probs(logits_fn(x, u), x, t, alphas, s)
        x = sample_states(probs, generator).to(x_T.dtype)
        if callback is not None:
            callback(s, x)
    return x


def all_masked(shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """The prior x_T: every pixel M."""
    return torch.full(shape, MASK, device=device)
