"""Probability-flow ODE likelihood of the VP model, in DDIM's variables (SPEC 11; Song et al. 2021).

With ``y = x/sqrt(alpha_bar)`` and ``sigma = sqrt((1 - alpha_bar)/alpha_bar)`` the marginals are
``y = x0 + sigma eps`` and the probability flow is ``dy/dsigma = eps_hat(x, t(sigma))``, so

    log p_0(y_0) = log N(y(sigma_max); 0, (1 + sigma_max^2) I) + integral_0^sigma_max div_y eps_hat dsigma

(``sigma_max = sigma_T``; the prior is N(0, I) in x). At ``sigma = 0``, ``y = x``, so the density of
y_0 is the density of x0. The integral is `zoo.common.ode_likelihood`'s.

Time convention: 1-based steps with ``alpha_bar_0 = 1``; between integer steps ``log alpha_bar`` is
interpolated linearly in ``t`` (`ContinuousAlphaBar`), so every ``sigma`` in ``[0, sigma_T]`` has a
fractional step ``t(sigma)`` in ``[0, T]`` and the network is called with the float ``t/T``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from zoo.common import ode_likelihood as ode
from zoo.gaussian.process import VPProcess

EpsAt = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # eps_at(x_t, t) with t float (B,) in [0, T]


class ContinuousAlphaBar:
    """alpha_bar at fractional steps t in [0, T]: log alpha_bar linear in t between integer steps.

    Equal to the process's alpha_bar_t at every integer t, with alpha_bar_0 = 1; strictly decreasing,
    so sigma(t) = sqrt(1/alpha_bar(t) - 1) has an inverse t(sigma). Tables are float64, cached per device.
    """

    def __init__(self, process: VPProcess):
        self.T = process.T
        self.log_alpha_bars = torch.cat([torch.zeros(1, dtype=torch.float64), process.alpha_bars.log()])  # (T + 1,)
        self._tables: dict[torch.device, torch.Tensor] = {}
        self.sigma_max = self.sigma(float(self.T))

    def table(self, device: torch.device) -> torch.Tensor:
        """log alpha_bar_t for t = 0..T on `device`, moved there once."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = self.log_alpha_bars.to(device)
        return self._tables[device]

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar(t) for a float tensor t (B,) in [0, T]: float64 on t's device."""
        tab = self.table(t.device)
        t = t.double().clamp(0, self.T)
        k = t.floor().clamp(max=self.T - 1)
        lo = tab.index_select(0, k.long())
        hi = tab.index_select(0, k.long() + 1)
        return lo + (t - k) * (hi - lo)

    def sigma(self, t: float) -> float:
        """sigma(t) = sqrt(1/alpha_bar(t) - 1) for a Python float t."""
        la = float(self.log_alpha_bar(torch.tensor([t], dtype=torch.float64))[0])
        return math.sqrt(math.expm1(-la))

    def t_of_sigma(self, sigma: float) -> float:
        """The fractional step t with sigma(t) = sigma (the exact inverse of `sigma`), a Python float."""
        la = -math.log1p(sigma ** 2)  # log alpha_bar = -log(1 + sigma^2)
        i = int(torch.searchsorted(-self.log_alpha_bars, torch.tensor([-la], dtype=torch.float64))[0])
        k = min(max(i - 1, 0), self.T - 1)  # log_alpha_bars[k] >= la >= log_alpha_bars[k + 1]
        lo, hi = float(self.log_alpha_bars[k]), float(self.log_alpha_bars[k + 1])
        return min(max(k + (lo - la) / (lo - hi), 0.0), float(self.T))


def vp_flow(eps_at: EpsAt, alpha_bar: ContinuousAlphaBar) -> ode.Flow:
    """g(y, sigma) = eps_hat(y/sqrt(1 + sigma^2), t(sigma)): DDIM's ODE dy/dsigma (Song et al. eq. 14)."""

    def g(y: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((y.shape[0],), alpha_bar.t_of_sigma(sigma), dtype=torch.float64, device=y.device)  # (B,)
        return eps_at(y / math.sqrt(1 + sigma ** 2), t)

    return g


def ode_terms(eps_at: EpsAt, alpha_bar: ContinuousAlphaBar, x0: torch.Tensor, bin_width: float | None,
              steps: int = 64, solver: str = "heun", hutchinson: bool | None = None,
              generator: torch.Generator | None = None, t_min: float = 0.0, rtol: float = 1e-5,
              atol: float = 1e-5) -> dict[str, torch.Tensor]:
    """-log p(x0) through the VP probability flow, in nats per example (B,) (SPEC 11).

    ``eps_at(x_t, t)`` is the eps prediction at fractional steps t (float64 (B,)). The flow starts at
    sigma(t_min) (0 by default: the data itself) and ends at sigma_T with the prior
    N(0, (1 + sigma_T^2) I). ``bin_width`` w: 8-bit data, dequantised with u ~ U(-w/2, w/2) and the
    term -D log w reported as "dequant"; None for continuous data. Keys: see
    `zoo.common.ode_likelihood.dequantised_nll`.
    """
    sigma_min = alpha_bar.sigma(t_min)
    prior_var = 1 + alpha_bar.sigma_max ** 2

    def log_likelihood(y):
        return ode.ode_log_likelihood(vp_flow(eps_at, alpha_bar), y, sigma_min, alpha_bar.sigma_max, prior_var,
                                      steps=steps, solver=solver, hutchinson=hutchinson, generator=generator,
                                      rtol=rtol, atol=atol)

    return ode.dequantised_nll(log_likelihood, x0, bin_width, generator)
