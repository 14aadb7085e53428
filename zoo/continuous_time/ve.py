"""Continuous-time variance-exploding diffusion and its two samplers (SPEC section 3).

Nakkiran et al., "Step-by-step Diffusion: An Elementary Tutorial" (arXiv 2406.08929), seed ``003_...``.

Time convention: ``t`` in [0, 1], step ``dt = 1/N``, sampling visits ``t = 1, 1 - dt, ..., dt``
(``t = k dt`` for ``k = N..1``) and returns ``x_0``. ``t = 0`` is data, ``t = 1`` is noise.

Symbols:

- ``x0``       a data point; ``x_t = x0 + N(0, sigma_q^2 t)`` (the forward process);
- ``sigma_q``  the terminal noise scale: ``x_1`` is sampled as ``N(0, sigma_q^2)``;
- ``f``        the network (or an exact formula) estimating ``E[x_{t-dt} | x_t]``, called
  ``f(x_t, t)`` with ``t`` a float tensor (B,) of the current time;
- ``x0_hat``   an estimate of ``E[x0 | x_t]``; ``f`` and ``x0_hat`` convert exactly through
  ``E[x_{t-dt} | x_t] = x_t + (dt/t)(E[x0 | x_t] - x_t)`` (the tutorial's "iid symmetry" identity);
- ``lambda``   the step fraction of the deterministic sampler, ``x_{t-dt} = x_t + lambda (f - x_t)``.

Likelihood (SPEC 11): the probability flow ``dx/dt = (x - x0_hat(x, t))/(2t)``, integrated in
``sigma = sigma_q sqrt(t)`` from ``t_min`` to ``t = 1`` with the prior N(0, sigma_q^2 I)
(`ode_flow`, `ode_terms`; the integrator is zoo.common.ode_likelihood).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable

import torch

from zoo.common import ode_likelihood as ode
from zoo.common.utils import append_dims, randn

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # f(x_t, t) -> E[x_{t-dt} | x_t]


# --------------------------------------------------------------------------- the forward process


def num_steps(dt: float) -> int:
    """N = 1/dt, which must be a whole number (the sampler visits t = k dt, k = N..1)."""
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")
    n = round(1.0 / dt)
    if n < 1 or abs(n * dt - 1.0) > 1e-6:
        raise ValueError(f"1/dt must be a whole number of steps, got dt = {dt} (1/dt = {1.0 / dt:.6g})")
    return n


def q_sample(x0: torch.Tensor, t: torch.Tensor, sigma_q: float, eps: torch.Tensor) -> torch.Tensor:
    """x_t = x0 + sigma_q sqrt(t) eps, eps ~ N(0, I) (Pseudocode 1, line 3); t a tensor (B,)."""
    return x0 + sigma_q * append_dims(t.clamp(min=0).sqrt(), x0.ndim) * eps


def forward_step(x_t: torch.Tensor, dt: float, sigma_q: float, eps: torch.Tensor) -> torch.Tensor:
    """x_{t+dt} = x_t + N(0, sigma_q^2 dt) (Pseudocode 1, line 4)."""
    return x_t + sigma_q * math.sqrt(dt) * eps


def posterior_mean(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, dt: float) -> torch.Tensor:
    """E[x_{t-dt} | x_t, x0] = x_t + (dt/t)(x0 - x_t) (SPEC section 3).

    With the true ``x0`` it is the analytic lower-variance training target; with a prediction
    ``x0_hat`` of ``E[x0 | x_t]`` it is the x0-prediction network's ``f``. ``t`` a tensor (B,).
    """
    return x_t + append_dims(dt / t, x_t.ndim) * (x0 - x_t)


def x0_from_f(x_t: torch.Tensor, f: torch.Tensor, t: torch.Tensor, dt: float) -> torch.Tensor:
    """The exact inverse of `posterior_mean`: x0 = x_t + (t/dt)(f - x_t)."""
    return x_t + append_dims(t / dt, x_t.ndim) * (f - x_t)


# --------------------------------------------------------------------------- the samplers


def lambda_rule(t, dt):
    """lambda = sqrt(t) / (sqrt(t - dt) + sqrt(t)) (Pseudocode 3, line 3, with the typo corrected).

    Equal to ``(t/dt)(1 - sqrt(1 - dt/t))``, the step that keeps a point mass's Gaussian p_t exact:
    1 at t = dt, 0.586 at 2 dt, 0.513 at 10 dt, -> 1/2 for t >> dt. Floats or tensors.
    """
    if torch.is_tensor(t):
        return t.sqrt() / ((t - dt).clamp(min=0).sqrt() + t.sqrt())
    return math.sqrt(t) / (math.sqrt(max(t - dt, 0.0)) + math.sqrt(t))


def velocity(x_t: torch.Tensor, f: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    """v_t = lambda (f - x_t)/dt, so that the lambda rule reads x_{t-dt} = x_t + dt v_t (ODE view)."""
    return lambda_rule(t, dt) * (f - x_t) / dt


def stochastic_step(x_t: torch.Tensor, f: torch.Tensor, t: float, dt: float, sigma_q: float,
                    noise: torch.Tensor) -> torch.Tensor:
    """x_{t-dt} = f(x_t, t) + N(0, sigma_q^2 dt) (Pseudocode 2, lines 3-4; noise at every step)."""
    return f + sigma_q * math.sqrt(dt) * noise


def lambda_step(x_t: torch.Tensor, f: torch.Tensor, lam: float) -> torch.Tensor:
    """x_{t-dt} = x_t + lambda (f(x_t, t) - x_t) (Pseudocode 3, line 4)."""
    return x_t + lam * (f - x_t)


class _Rule:
    """A validated sampler rule: 'stochastic', 'lambda' (the lambda rule) or a fixed lambda."""

    NAMES = ("stochastic", "lambda")

    def __init__(self, rule):
        if isinstance(rule, Real) and not isinstance(rule, bool):
            self.fixed, self.stochastic = float(rule), False
        elif rule in self.NAMES:
            self.fixed, self.stochastic = None, rule == "stochastic"
        else:
            raise ValueError(f"unknown rule {rule!r}; choose from 'stochastic', 'lambda' or a number (fixed lambda)")

    def lam(self, t: float, dt: float) -> float:
        return lambda_rule(t, dt) if self.fixed is None else self.fixed


def sample(f: Denoiser, x_1: torch.Tensor, dt: float, rule="lambda", sigma_q: float = 1.0,
           generator: torch.Generator | None = None,
           callback: Callable[[float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run t = 1, 1 - dt, ..., dt down to x_0 with Pseudocode 2 (``rule="stochastic"``), Pseudocode 3
    (``rule="lambda"``) or a fixed lambda (a number). Returns x_0 only.

    ``f(x_t, t)`` estimates ``E[x_{t-dt} | x_t]`` (``t`` a tensor (B,) in x_1's dtype); ``x_1`` is the
    starting noise (``N(0, sigma_q^2)`` in the tutorial); ``generator`` drives the stochastic noise;
    ``callback(t, x_t)`` sees the state at t = 1 and after every step (t = 1 - dt, ..., 0).
    """
    step_rule, n = _Rule(rule), num_steps(dt)
    x = x_1
    if callback is not None:
        callback(1.0, x)
    for k in range(n, 0, -1):
        t = k * dt
        t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        f_t = f(x, t_vec)
        if step_rule.stochastic:
            noise = randn(x.shape, generator, x.device, x.dtype)
            x = stochastic_step(x, f_t, t, dt, sigma_q, noise)
        else:
            x = lambda_step(x, f_t, step_rule.lam(t, dt))
        if callback is not None:
            callback((k - 1) * dt, x)
    return x


# --------------------------------------------------------------------------- exact conditional means


def gaussian_x0_mean(mean: float, std: float, sigma_q: float) -> Denoiser:
    """E[x0 | x_t] for p0 = N(mean, std^2) (independent coordinates):
    mean + std^2/(std^2 + sigma_q^2 t) (x_t - mean); std = 0 is the point mass delta_mean."""

    def x0_mean(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shrink = std ** 2 / (std ** 2 + sigma_q ** 2 * t)
        return mean + append_dims(shrink, x_t.ndim) * (x_t - mean)

    return x0_mean


def points_x0_mean(points: torch.Tensor, sigma_q: float) -> Denoiser:
    """E[x0 | x_t] for p0 uniform on a finite set of points (M, D): a softmax over
    -|x_t - x_i|^2 / (2 sigma_q^2 t) of the points (the ideal denoiser of a training set)."""

    def x0_mean(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x_t.reshape(len(x_t), -1), points.reshape(len(points), -1).to(x_t)) ** 2  # (B, M)
        w = torch.softmax(-d2 / (2 * sigma_q ** 2 * t[:, None]), dim=1)  # (B, M)
        return (w @ points.reshape(len(points), -1).to(x_t)).reshape(x_t.shape)

    return x0_mean


def f_from_x0_mean(x0_mean: Denoiser, dt: float) -> Denoiser:
    """Turn an estimate of E[x0 | x_t] into f(x_t, t) = E[x_{t-dt} | x_t] with `posterior_mean`."""
    return lambda x_t, t: posterior_mean(x_t, x0_mean(x_t, t), t, dt)


# --------------------------------------------------------------------------- probability-flow likelihood


def ode_flow(x0_mean: Denoiser, sigma_q: float):
    """The probability flow in sigma = sigma_q sqrt(t): dx/dsigma = (x - x0_hat(x, t))/sigma.

    SPEC 11's dx/dt = (x - x0_hat(x, t))/(2t) with dt/dsigma = 2 sigma/sigma_q^2 = 2t/sigma; the
    divergence integral is the same in either variable. ``x0_mean(x, t)`` is called with t float64 (B,).
    """

    def g(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), (sigma / sigma_q) ** 2, dtype=torch.float64, device=x.device)  # (B,)
        return (x - x0_mean(x, t)) / sigma

    return g


def ode_terms(x0_mean: Denoiser, x0: torch.Tensor, sigma_q: float, bin_width: float | None, t_min: float,
              steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
              generator: torch.Generator | None = None, rtol: float = 1e-5, atol: float = 1e-5) -> dict:
    """-log p(x0) through the VE probability flow from t_min to t = 1, prior N(0, sigma_q^2 I) as the
    sampler's x_1 (SPEC 11), in nats per example; keys and dequantisation (``bin_width``) as
    `zoo.common.ode_likelihood.dequantised_nll`. ``t_min`` > 0: x0_hat/t is singular at t = 0.
    """
    if not 0 < t_min < 1:
        raise ode.ODELikelihoodError(f"t_min must be in (0, 1), got {t_min}")

    def log_likelihood(y):
        return ode.ode_log_likelihood(ode_flow(x0_mean, sigma_q), y, sigma_q * math.sqrt(t_min), sigma_q,
                                      sigma_q ** 2, steps=steps, solver=solver, hutchinson=hutchinson,
                                      generator=generator, rtol=rtol, atol=atol)

    return ode.dequantised_nll(log_likelihood, x0, bin_width, generator)
