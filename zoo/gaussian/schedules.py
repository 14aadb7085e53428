"""Noise schedules and sampling step grids of the variance-preserving process (SPEC sections 1, 11).

Time convention: 1-based steps t = 1..T, t = T is (nearly) pure noise. Each schedule is a pure
function returning ``betas`` as a float64 tensor of length T with ``betas[t - 1] = beta_t``.
``rescale_betas_zero_snr`` rebuilds any schedule so that alpha_bar_T = 0 (then beta_T = 1), and
``step_grid`` gives the S steps of 1..T a sampler visits (diffusers' ``timestep_spacing``).
"""

from __future__ import annotations

import math

import torch

from zoo import ZooError


class ScheduleError(ZooError, ValueError):
    """An unknown schedule or spacing, or a grid that does not fit the process."""


def linear(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """beta_t linear from beta_1 to beta_T (Ho et al. 2020)."""
    return torch.linspace(beta_1, beta_T, T, dtype=torch.float64)


def quadratic(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """sqrt(beta_t) linear between sqrt(beta_1) and sqrt(beta_T)."""
    return torch.linspace(beta_1 ** 0.5, beta_T ** 0.5, T, dtype=torch.float64) ** 2


def sigmoid(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """beta_t = beta_1 + (beta_T - beta_1) * sigmoid(linspace(-6, 6, T))."""
    return beta_1 + (beta_T - beta_1) * torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64))


def cosine(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17: alpha_bar_t = f(t)/f(0), beta_t = min(1 - alpha_bar_t/alpha_bar_{t-1}, 0.999)."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2
    alpha_bar = f / f[0]  # alpha_bar[0] = 1
    return torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=max_beta)


SCHEDULES = {"linear": linear, "quadratic": quadratic, "sigmoid": sigmoid, "cosine": cosine}


def make_betas(name: str, T: int, **kw) -> torch.Tensor:
    """betas[T] (float64) of the named schedule; kw: beta_1, beta_T (linear/quadratic/sigmoid), s (cosine)."""
    if name not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if T < 1:
        raise ScheduleError(f"T must be >= 1, got {T}")
    return SCHEDULES[name](T, **kw)


def rescale_betas_zero_snr(betas: torch.Tensor) -> torch.Tensor:
    """Zero terminal SNR (Lin et al. 2024, Algorithm 1; SPEC 11): betas whose alpha_bar_T = 0.

    With a = sqrt(alpha_bar): a <- (a - a_T) a_1/(a_1 - a_T), a linear map fixing a_1 and sending
    a_T to 0; alpha_bar = a^2 and beta_t = 1 - alpha_bar_t/alpha_bar_{t-1} (so beta_1 is unchanged
    and beta_T = 1). float64 in, float64 out.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if len(betas) < 2:
        raise ScheduleError(f"zero terminal SNR needs T >= 2 steps, got {len(betas)}")
    a = torch.cumprod(1 - betas, dim=0).sqrt()
    a_1, a_T = a[0], a[-1]
    a = (a - a_T) * a_1 / (a_1 - a_T)
    alpha_bar = a ** 2
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return 1 - alpha_bar / alpha_bar_prev


def _leading(T: int, S: int) -> torch.Tensor:
    """t_i = 1 + i floor(T/S): diffusers' 'leading' (steps_offset = 0), plus one for 1-based steps."""
    return 1 + torch.arange(S) * (T // S)


def _trailing(T: int, S: int) -> torch.Tensor:
    """t_i = round(T - i T/S): diffusers' 'trailing', computed as np.arange(T, 0, -T/S) does it.

    numpy's arange fills T + i * delta with delta = (T - T/S) - T rounded in float64, and
    np.round rounds half to even; doing the same float64 operations makes a tie such as
    T = 7, S = 6, i = 3 (7 - 3.5) land where diffusers puts it.
    """
    delta = (T - T / S) - T
    return torch.round(T + torch.arange(S, dtype=torch.float64) * delta).long().flip(0)


def _linspace(T: int, S: int) -> torch.Tensor:
    """t_i = 1 + round(i (T - 1)/(S - 1)): diffusers' 'linspace' (np.linspace(0, T - 1, S).round())."""
    if S == 1:
        return torch.ones(1, dtype=torch.long)
    u = torch.arange(S, dtype=torch.float64) * ((T - 1) / (S - 1))
    u[-1] = T - 1  # np.linspace sets the endpoint exactly
    return 1 + torch.round(u).long()


SPACINGS = {"leading": _leading, "trailing": _trailing, "linspace": _linspace}


def step_grid(T: int, S: int, spacing: str = "leading") -> torch.Tensor:
    """The S steps of 1..T a sampler visits, increasing, 1-based (SPEC 11): LongTensor (S,).

    Samplers use them from the largest down; the step after the smallest goes to alpha_bar_0 = 1.
      leading:  t_i = 1 + i floor(T/S)            (never reaches T: the top step is 1 + (S-1) floor(T/S))
      trailing: t_i = round(T - i T/S)            (always starts at T)
      linspace: t_i = 1 + round(i (T-1)/(S-1))    (1 and T both included)
    with i = 0..S-1, each equal to diffusers' ``timestep_spacing`` of the same name shifted by one.
    When S divides T, 'leading' is the old strided grid 1 + floor(i T/S); when it does not, the
    strided grid spreads the remainder over the steps (T = 10, S = 4: 1, 3, 6, 8) while 'leading'
    keeps a constant stride floor(T/S) and leaves the remainder above its top step (1, 3, 5, 7).
    """
    if spacing not in SPACINGS:
        raise ScheduleError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
    if not 1 <= S <= T:
        raise ScheduleError(f"steps must be in 1..{T}, got {S}")
    return SPACINGS[spacing](T, S)
