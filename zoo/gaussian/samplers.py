"""Samplers of the variance-preserving process (SPEC sections 1, 7 and 11).

Every sampler is a free function taking a denoiser ``denoiser(x_t, t)`` (``t`` a long tensor (B,)
of 1-based steps of the *original* process), a ``VPProcess``, the starting noise ``x_T``, and
returning only ``x_0``. The denoiser predicts eps by default; ``prediction="x0"`` or ``"v"`` says
it predicts that instead, which is what a zero-terminal-SNR process needs at ``t = T`` (there
``alpha_bar_T = 0`` and eps does not determine x0; eps raises ``ZeroSNRError``). An optional
``callback(info)`` is called after every step with ``{"i": step index, "t": the step just taken
(int, 1-based, of the original process), "x": the new state, "x0_hat": the current estimate of
x0}``. A respaced process (``VPProcess.respace``) works unchanged: the denoiser is called with
``process.model_t(t)``. NFE is counted by wrapping the denoiser in ``CountingDenoiser``.

Strided samplers visit ``schedules.step_grid(T, steps, spacing)`` (``spacing`` one of leading,
trailing, linspace; SPEC 11), from its largest step down, then go to ``alpha_bar_0 = 1``.

Every step is one step for the whole batch, so the samplers hand the process a Python int ``t``
and its coefficients come back as Python floats: apart from the network, a DDPM step is a handful
of elementwise kernels (no gather, cast or host sync), which is what bounds a sampler's wall time
by its network evaluations on a GPU. ``clip=True`` clamps the x0_hat implied by every prediction to
[-1, 1] (improved-diffusion's clip_denoised) before the step uses it.

Time convention: 1-based steps, ``t = T`` noise, ``alpha_bar_0 = 1``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from zoo.common.utils import randn, step_tensor
from zoo.gaussian.learned_variance import LearnedLogVariance
from zoo.gaussian.process import PREDICTIONS, REVERSE_VARIANCES, VPProcess
from zoo.gaussian.schedules import SPACINGS, ScheduleError, step_grid

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ODE_METHODS = ("euler", "heun")


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (network function evaluations, NFE)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.nfe = denoiser, 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.denoiser(x_t, t)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise like x, drawn on the generator's device (a CPU generator works for CUDA x)."""
    return randn(x.shape, generator, x.device, x.dtype)


def _predict(denoiser: Denoiser, process: VPProcess, x: torch.Tensor, t: int, prediction: str, clip: bool):
    """(prediction, learned variance output or None) of the denoiser at step t of `process`, clipped if asked."""
    out = denoiser(x, step_tensor(process.model_t(t), x))
    out, v = out if isinstance(out, tuple) else (out, None)
    return (process.clip_x0(out, x, t, prediction) if clip else out), v


def _check(prediction: str, spacing: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")
    if spacing not in SPACINGS:
        raise ScheduleError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")


def ddpm(denoiser: Denoiser, process: VPProcess, x_T: torch.Tensor, variance: str = "beta_tilde",
         generator: torch.Generator | None = None, callback=None, steps: int | None = None,
         spacing: str = "leading", prediction: str = "eps", clip: bool = False) -> torch.Tensor:
    """Ancestral sampling, Algorithm 2 of Ho et al. (2020): x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    sigma_t^2 is beta_t ('beta') or beta_tilde_t ('beta_tilde'); z = 0 at t = 1. All T steps by
    default; with `steps`, ancestral sampling on the process respaced to step_grid(T, steps, spacing)
    (improved-diffusion's respacing). A denoiser that returns (prediction, v) has learned variances:
    sigma_t^2 comes from v (Nichol & Dhariwal eq. 15, on the respaced betas) and `variance` is not used.
    """
    if variance not in REVERSE_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose from {', '.join(REVERSE_VARIANCES)}")
    _check(prediction, spacing)
    spaced = process if steps is None else process.respace(step_grid(process.T, steps, spacing))
    learned = LearnedLogVariance(spaced)
    x = x_T
    for i, t in enumerate(range(spaced.T, 0, -1)):
        out, v = _predict(denoiser, spaced, x, t, prediction, clip)
        x0_hat = spaced.split(out, x, t, prediction)[0] if callback is not None else None
        mu = spaced.reverse_mean(out, x, t, prediction)  # Ho et al. eq. 11 (eps) or mu_tilde(x0_hat, x_t)
        if t > 1:
            std = (math.sqrt(spaced.reverse_variance(t, x, variance)) if v is None
                   else (0.5 * learned(step_tensor(t, x), v)).exp().to(x.dtype))
            x = mu + std * _noise(x, generator)
        else:
            x = mu
        if callback is not None:
            callback({"i": i, "t": spaced.model_t(t), "x": x, "x0_hat": x0_hat})
    return x


def ddim(denoiser: Denoiser, process: VPProcess, x_T: torch.Tensor, steps: int, eta: float = 0.0,
         generator: torch.Generator | None = None, callback=None, spacing: str = "leading",
         prediction: str = "eps", clip: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) on the `steps` steps tau = step_grid(T, steps, spacing), stochasticity eta.

    eta = 0 is deterministic; eta = 1 with all steps is DDPM with beta_tilde.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    _check(prediction, spacing)
    spaced = process.respace(step_grid(process.T, steps, spacing))
    alpha_bars, alpha_bars_prev = spaced.alpha_bars.tolist(), spaced.alpha_bars_prev.tolist()  # float64
    x = x_T
    for i, t in enumerate(range(spaced.T, 0, -1)):
        # 1. Predicted x0 and eps ("predicted x_0" of eq. 12), exact from any prediction kind.
        x0_hat, eps = spaced.split(_predict(denoiser, spaced, x, t, prediction, clip)[0], x, t, prediction)
        ab, ab_prev = alpha_bars[t - 1], alpha_bars_prev[t - 1]
        # 2. sigma_tau(eta), eq. 16.
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        # 3. Direction pointing to x_t, then the random part.
        x = math.sqrt(ab_prev) * x0_hat + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
        if eta > 0 and t > 1:
            x = x + sigma * _noise(x, generator)
        if callback is not None:
            callback({"i": i, "t": spaced.model_t(t), "x": x, "x0_hat": x0_hat})
    return x


def ode(denoiser: Denoiser, process: VPProcess, x_T: torch.Tensor, steps: int, method: str = "euler",
        callback=None, spacing: str = "leading", prediction: str = "eps", clip: bool = False) -> torch.Tensor:
    """Probability-flow ODE in DDIM's variables (Song et al. 2021, eq. 14), Euler or Heun steps.

    With y = x/sqrt(alpha_bar) and sigma = sqrt((1 - alpha_bar)/alpha_bar) the ODE is
    dy/dsigma = eps(x, t). The grid is step_grid(T, steps, spacing), t_S > ... > t_1, then sigma = 0
    (x0), so the denoiser is only evaluated at integer steps. Euler on this grid is exactly DDIM
    with eta = 0; it is written y_next = x0_hat + sigma_next eps (= y + (sigma_next - sigma) eps),
    which stays finite from sigma = inf (zero terminal SNR, t = T). Heun (Karras et al. 2022,
    Alg. 1) corrects every step but two Euler steps: the last, to sigma = 0 where eps is undefined,
    and the first, from sigma_T, where the flow is linear in sigma up to O(s^2/sigma_T^2) (s the
    data scale) while a trapezoid across a huge sigma ratio is not (cosine schedule: sigma_T ~ 2e3
    for T = 100); one Euler step keeps the global error second order. NFE: `steps` for Euler,
    2 steps - 2 for Heun (steps >= 2).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose from {', '.join(ODE_METHODS)}")
    _check(prediction, spacing)
    spaced = process.respace(step_grid(process.T, steps, spacing))
    ab = spaced.alpha_bars  # float64 (S,)
    sigmas = [0.0] + ((1 - ab) / ab).sqrt().tolist()  # sigmas[j]: step j
    scales = [1.0] + ab.sqrt().tolist()  # sqrt(alpha_bar) at step j
    x = x_T
    for i, j in enumerate(range(spaced.T, 0, -1)):
        x0_hat, d_cur = spaced.split(_predict(denoiser, spaced, x, j, prediction, clip)[0], x, j, prediction)
        # Euler step.
        y_next = x0_hat + sigmas[j - 1] * d_cur
        if method == "heun" and 1 < j < spaced.T:
            # Apply 2nd order correction.
            x_next = y_next * scales[j - 1]
            out = _predict(denoiser, spaced, x_next, j - 1, prediction, clip)[0]
            d_next = spaced.split(out, x_next, j - 1, prediction)[1]
            y_next = x / scales[j] + (sigmas[j - 1] - sigmas[j]) * 0.5 * (d_cur + d_next)
        x = y_next * scales[j - 1]
        if callback is not None:
            callback({"i": i, "t": spaced.model_t(j), "x": x, "x0_hat": x0_hat})
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "ode": ode}
