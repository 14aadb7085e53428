"""Noise schedules of the variance-preserving process (SPEC section 1).

Time convention: 1-based steps t = 1..T, t = T is (nearly) pure noise. Each schedule is a pure
function returning ``betas`` as a float64 tensor of length T with ``betas[t - 1] = beta_t``.
"""

from __future__ import annotations

import math

import torch


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
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return SCHEDULES[name](T, **kw)
