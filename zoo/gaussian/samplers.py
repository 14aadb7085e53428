"""Samplers of the variance-preserving process (SPEC sections 1 and 7).

Every sampler is a free function taking an eps-denoiser ``denoiser(x_t, t) -> eps_hat`` (``t`` a
long tensor (B,) of 1-based steps of the *original* process), a ``VPProcess``, the starting noise
``x_T``, and returning only ``x_0``. An optional ``callback(info)`` is called after every step with
``{"i": step index, "t": the step just taken (int, 1-based), "x": the new state, "x0_hat": the
current estimate of x0}``. A respaced process (``VPProcess.respace``) works unchanged: the denoiser
is called with ``process.model_t(t)``. NFE is counted by wrapping the denoiser in ``CountingDenoiser``.

Time convention: 1-based steps, ``t = T`` noise, ``alpha_bar_0 = 1``.
"""

from __future__ import annotations

from typing import Callable

import torch

from zoo.common.utils import randn
from zoo.gaussian.learned_variance import LearnedLogVariance
from zoo.gaussian.process import REVERSE_VARIANCES, VPProcess, strided_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ODE_METHODS = ("euler", "heun")


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (network function evaluations, NFE)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.denoiser(x_t, t)


def _steps(x: torch.Tensor, t: int) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like x, drawn on the generator's device (a CPU generator works for CUDA x)."""
    return randn(x.shape, generator, x.device, x.dtype)


def ddpm(denoiser: Denoiser, process: VPProcess, x_T: torch.Tensor, variance: str = "beta_tilde",
         generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Ancestral sampling, Algorithm 2 of Ho et al. (2020): x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    sigma_t^2 is beta_t ('beta') or beta_tilde_t ('beta_tilde'); z = 0 at t = 1. A denoiser that
    returns (eps, v) has learned variances: sigma_t^2 comes from v (Nichol & Dhariwal eq. 15) and
    `variance` is not used.
    """
    if variance not in REVERSE_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose from {', '.join(REVERSE_VARIANCES)}")
    learned = LearnedLogVariance(process)
    x = x_T
    for i, t_int in enumerate(range(process.T, 0, -1)):
        t = _steps(x, t_int)
        eps = denoiser(x, process.model_t(t))
        eps, v = eps if isinstance(eps, tuple) else (eps, None)
        mu = process.mean_from_eps(eps, x, t)  # Ho et al. eq. 11
        if t_int > 1:
            std = (process.reverse_variance(t, x, variance).sqrt() if v is None
                   else (0.5 * learned(t, v)).exp().to(x.dtype))
            x = mu + std * _noise(x, generator)
        else:
            x = mu
        if callback is not None:
            callback({"i": i, "t": t_int, "x": x, "x0_hat": process.convert(eps, x, t, "eps", "x0")})
    return x


def ddim(denoiser: Denoiser, process: VPProcess, x_T: torch.Tensor, steps: int, eta: float = 0.0,
         generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) on `steps` evenly strided steps tau of 1..T, stochasticity eta.

    eta = 0 is deterministic; eta = 1 with all steps is DDPM with beta_tilde.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    spaced = process.respace(strided_timesteps(process.T, steps))
    x = x_T
    for i, t_int in enumerate(range(spaced.T, 0, -1)):
        t = _steps(x, t_int)
        eps = denoiser(x, spaced.model_t(t))
        ab = spaced.coef("alpha_bars", t, x)
        ab_prev = spaced.coef("alpha_bars_prev", t, x)
        # 1. Predicted x0 ("predicted x_0" of eq. 12).
        x0_hat = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        # 2. sigma_tau(eta), eq. 16.
        sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
        # 3. Direction pointing to x_t, then the random part.
        x = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_int > 1:
            x = x + sigma * _noise(x, generator)
        if callback is not None:
            callback({"i": i, "t": int(spaced.timesteps[t_int - 1]), "x": x, "x0_hat": x0_hat})
    return x


def ode(denoiser: Denoiser, process: VPProcess, x_T: torch.Tensor, steps: int, method: str = "euler",
        callback=None) -> torch.Tensor:
    """Probability-flow ODE in DDIM's variables (Song et al. 2021, eq. 14), Euler or Heun steps.

    With y = x/sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar)/alpha_bar) the ODE is
    dy/dsigma = eps(x, t). The grid is `steps` strided integer steps t_S > ... > t_1 then sigma = 0
    (x0), so the denoiser is only evaluated at integer steps. Euler on this grid is exactly DDIM
    with eta = 0. Heun (Karras et al. 2022, Alg. 1) corrects every step but two Euler steps: the
    last, to sigma = 0 where eps is undefined, and the first, from sigma_T, where the flow is linear
    in sigma up to O(s^2/sigma_T^2) (s the data scale) while a trapezoid across a huge sigma ratio
    is not (cosine schedule: sigma_T ~ 2e3 for T = 100); one Euler step keeps the global error
    second order. NFE: `steps` for Euler, 2 steps - 2 for Heun (steps >= 2).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose from {', '.join(ODE_METHODS)}")
    spaced = process.respace(strided_timesteps(process.T, steps))
    ab = spaced.alpha_bars  # float64 (S,)
    sigmas = torch.cat([torch.zeros(1, dtype=torch.float64), ((1 - ab) / ab).sqrt()])  # sigmas[j]: step j
    scales = torch.cat([torch.ones(1, dtype=torch.float64), ab.sqrt()])  # sqrt(alpha_bar) at step j
    y = x_T / float(scales[-1])
    for i, j in enumerate(range(spaced.T, 0, -1)):
        d_cur = denoiser(y * float(scales[j]), spaced.model_t(_steps(y, j)))
        h = float(sigmas[j - 1] - sigmas[j])
        # Euler step.
        y_next = y + h * d_cur
        if method == "heun" and 1 < j < spaced.T:
            # Apply 2nd order correction.
            d_next = denoiser(y_next * float(scales[j - 1]), spaced.model_t(_steps(y, j - 1)))
            y_next = y + h * 0.5 * (d_cur + d_next)
        x0_hat = y - float(sigmas[j]) * d_cur
        y = y_next
        if callback is not None:
            callback({"i": i, "t": int(spaced.timesteps[j - 1]), "x": y * float(scales[j - 1]), "x0_hat": x0_hat})
    return y


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "ode": ode}
