"""Schedules of the binary processes: flip probabilities (bit-flip, SPEC section 2) and masking
schedules (absorbing diffusion, SPEC section 11).

Bit-flip. Time convention: 1-based steps ``t = 1..T``, ``t = T`` is (nearly) fair coins. Each
schedule is a pure function returning ``deltas`` as a float64 tensor of length T with
``deltas[t - 1] = delta_t``, the probability that step t flips a pixel. Every ``delta_t`` lies in
(0, 1/2]: 0 would make some posteriors 0/0 (an impossible flip observed) and 1/2 already replaces
the pixel by a fair coin.

Masking. A schedule is a pair of pure functions of continuous time ``u in [0, 1]``: ``alpha(u)``,
the probability that a pixel is still unmasked, decreasing from ``alpha(0) = 1`` to
``alpha(1) = 0``, and its derivative ``alpha'(u)``; the T-step process uses ``alpha_t = alpha(t/T)``
(``make_alphas``, a float64 tensor of length T + 1 with ``alphas[t] = alpha_t``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from zoo.common import config


class ConfigError(config.ConfigError):
    """An unknown variant name or an out-of-range setting of a binary formulation (one line, with
    the valid choices)."""


def constant(T: int, delta: float = 0.02) -> torch.Tensor:
    """delta_t = delta for every t (the discrete HW's process)."""
    return torch.full((T,), float(delta), dtype=torch.float64)


def linear(T: int, delta_1: float = 1e-3, delta_T: float = 0.1) -> torch.Tensor:
    """delta_t linear from delta_1 to delta_T."""
    return torch.linspace(delta_1, delta_T, T, dtype=torch.float64)


def cosine(T: int, s: float = 0.008) -> torch.Tensor:
    """kappa_t = f(t)/f(0) with Nichol & Dhariwal's f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), so that
    delta_t = (1 - kappa_t/kappa_{t-1})/2 (from kappa_t = kappa_{t-1}(1 - 2 delta_t)); the last
    step has kappa_T = 0, i.e. delta_T = 1/2."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2
    kappa = f / f[0]
    return ((1 - kappa[1:] / kappa[:-1]) / 2).clamp(1e-12, 0.5)


def constant_for_kappa_T(T: int, kappa_T: float = 1e-3) -> float:
    """The constant delta whose kappa_T = (1 - 2 delta)^T equals `kappa_T`."""
    return (1 - kappa_T ** (1.0 / T)) / 2


SCHEDULES = {"constant": constant, "linear": linear, "cosine": cosine}


def make_deltas(name: str, T: int, **kw) -> torch.Tensor:
    """deltas[T] (float64) of the named schedule; kw: delta (constant), delta_1, delta_T (linear),
    s (cosine)."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown delta schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if T < 1:
        raise ConfigError(f"T must be >= 1, got {T}")
    deltas = SCHEDULES[name](T, **kw)
    check_deltas(deltas)
    return deltas


def check_deltas(deltas: torch.Tensor) -> None:
    """Raise unless every delta_t is in (0, 1/2]."""
    if deltas.ndim != 1 or len(deltas) < 1:
        raise ConfigError(f"deltas must be a non-empty 1-D tensor, got shape {tuple(deltas.shape)}")
    if not bool(((deltas > 0) & (deltas <= 0.5)).all()):
        raise ConfigError(f"every delta_t must lie in (0, 0.5]; got min {deltas.min().item():.3g}, "
                         f"max {deltas.max().item():.3g}")


# --------------------------------------------------------------------------- masking (SPEC 11)


def linear_alpha(u: torch.Tensor) -> torch.Tensor:
    """alpha(u) = 1 - u (MDLM's and MD4's linear schedule)."""
    return 1 - u


def linear_alpha_prime(u: torch.Tensor) -> torch.Tensor:
    """alpha'(u) = -1."""
    return -torch.ones_like(u)


def cosine_alpha(u: torch.Tensor) -> torch.Tensor:
    """alpha(u) = 1 - cos(pi/2 (1 - u)) (MD4's cosine, MaskGIT's mask ratio cos(pi/2 (1 - u)))."""
    return 1 - torch.cos(math.pi / 2 * (1 - u))


def cosine_alpha_prime(u: torch.Tensor) -> torch.Tensor:
    """alpha'(u) = -pi/2 sin(pi/2 (1 - u))."""
    return -math.pi / 2 * torch.sin(math.pi / 2 * (1 - u))


def polynomial_alpha(u: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """alpha(u) = 1 - u^power (MD4's polynomial schedule)."""
    return 1 - u ** power


def polynomial_alpha_prime(u: torch.Tensor, power: float = 2.0) -> torch.Tensor:
    """alpha'(u) = -power u^(power - 1)."""
    return -power * u ** (power - 1)


MASK_SCHEDULES = {
    "linear": (linear_alpha, linear_alpha_prime),
    "cosine": (cosine_alpha, cosine_alpha_prime),
    "polynomial": (polynomial_alpha, polynomial_alpha_prime),
}

AlphaFn = Callable[[torch.Tensor], torch.Tensor]


def mask_schedule(name: str, **kw) -> tuple[AlphaFn, AlphaFn]:
    """(alpha, alpha') of the named masking schedule with its keywords bound (polynomial: power)."""
    if name not in MASK_SCHEDULES:
        raise ConfigError(f"unknown masking schedule {name!r}; choose from {', '.join(MASK_SCHEDULES)}")
    if name == "polynomial" and not kw.get("power", 2.0) > 0:
        raise ConfigError(f"the polynomial masking schedule needs power > 0, got {kw['power']}")
    alpha, alpha_prime = MASK_SCHEDULES[name]
    return functools.partial(alpha, **kw), functools.partial(alpha_prime, **kw)


def make_alphas(name: str, T: int, **kw) -> torch.Tensor:
    """alphas[T + 1] (float64), alphas[t] = alpha(t/T), with alpha_0 = 1 and alpha_T = 0 set exactly."""
    if T < 1:
        raise ConfigError(f"T must be >= 1, got {T}")
    alpha, _ = mask_schedule(name, **kw)
    alphas = alpha(torch.arange(T + 1, dtype=torch.float64) / T)
    alphas[0], alphas[-1] = 1.0, 0.0
    return alphas
